//! The HTTP API's Lambda: every REST route of the séance protocol, served by the router in
//! `seance::rest` through `lambda_http`.

use seance::config::{Config, Profile};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let config = Config::from_env(Profile::Lambda)?;
    seance::telemetry::init(&config.log_level, config.log_format);
    let websocket_url = config.public_ws_url.clone().unwrap_or_default();
    let (app, _database) = seance::App::build(config, &websocket_url)?;
    lambda_http::run(seance::rest::router(app)).await
}
