//! The cold-start baseline: a hello-world `lambda_runtime` function, which
//! `bench-coldstart` builds itself with the real functions' profile and flags, so it can
//! say how much slower than "nothing at all" each one starts.
//! It answers every event with a fixed API Gateway-shaped response.

use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|_: LambdaEvent<serde_json::Value>| async {
        Ok::<_, Error>(serde_json::json!({ "statusCode": 200, "body": "hello" }))
    }))
    .await
}
