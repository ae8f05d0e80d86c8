//! [`forward_rpcs!`](crate::forward_rpcs): the RPCs of a service trait
//! whose handlers live in other modules, named once each.
//!
//! A tonic service is one trait, so its impl is one block; a service with
//! many RPCs keeps its handlers in modules per concern as inherent
//! methods, and the trait impl only hands each request on. Written out,
//! each such hand-over is the same nine lines. Inside the
//! `#[tonic::async_trait]` impl the macro writes them from one line each,
//! in the boxed-future form `async_trait` gives the trait's methods
//! (`async_trait` leaves a macro call in the impl as it is, so the macro
//! spells the signature that attribute would have produced).

/// Writes trait methods that hand their request to an inherent method.
///
/// Each line is `rpc(Request) -> Response = handler(how);` where `how`
/// says what the handler takes and gives:
/// - `message`: the request's message, and gives `Result<Response, Status>`;
/// - `request`: the whole `tonic::Request` (for the caller's identity and
///   metadata), and gives `Result<Response, Status>`;
/// - `tonic`: the whole `tonic::Request`, and gives
///   `Result<tonic::Response<Response>, Status>`.
///
/// ```ignore
/// #[tonic::async_trait]
/// impl pb::ExampleService for ExampleServer {
///     steward_server::forward_rpcs! {
///         get_thing(pb::GetThingRequest) -> pb::GetThingResponse = get_thing_impl(message);
///         delete_thing(pb::DeleteThingRequest) -> pb::DeleteThingResponse = delete_thing_impl(request);
///     }
/// }
/// ```
#[macro_export]
macro_rules! forward_rpcs {
    (@call $self:ident.$handler:ident(message $request:ident)) => {
        $self.$handler($request.into_inner()).await.map(::tonic::Response::new)
    };
    (@call $self:ident.$handler:ident(request $request:ident)) => {
        $self.$handler($request).await.map(::tonic::Response::new)
    };
    (@call $self:ident.$handler:ident(tonic $request:ident)) => {
        $self.$handler($request).await
    };
    ($($rpc:ident($req:ty) -> $resp:ty = $handler:ident($how:ident);)*) => {
        $(
            fn $rpc<'life0, 'async_trait>(
                &'life0 self,
                request: ::tonic::Request<$req>,
            ) -> ::std::pin::Pin<
                ::std::boxed::Box<
                    dyn ::std::future::Future<
                            Output = ::std::result::Result<::tonic::Response<$resp>, ::tonic::Status>,
                        > + ::std::marker::Send
                        + 'async_trait,
                >,
            >
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                ::std::boxed::Box::pin(async move {
                    $crate::forward_rpcs!(@call self.$handler($how request))
                })
            }
        )*
    };
}
