//! The HTTP API's Lambda: every REST route of the séance protocol, served by the router in
//! `seance::rest` through `lambda_http`.

// One event at a time, on a fraction of a vCPU: worker threads would only slow the start.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    let app = seance::App::for_lambda(
        seance::config::Needs::SESSIONS_API,
        seance::spirit::queue::none,
    );
    lambda_http::run(seance::rest::router(app)).await
}
