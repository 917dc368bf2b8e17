//! The WebSocket API's disconnect Lambda: $disconnect: forgets the connection, announces `user_left` when it was the participant's last.
//! The handler is `seance::ws::handle_disconnect`, which the local harness calls too.

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use lambda_runtime::{Error, LambdaEvent, service_fn};

// One event at a time, on a fraction of a vCPU: worker threads would only slow the start.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let app = seance::App::for_lambda(
        seance::config::Needs::WS_DISCONNECT,
        seance::spirit::queue::none,
    );
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| {
            let app = app.clone();
            async move { Ok::<_, Error>(seance::ws::handle_disconnect(&app, event.payload).await) }
        },
    ))
    .await
}
