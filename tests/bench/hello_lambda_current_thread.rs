//! The cold-start baseline of `bench-hello-lambda` on a single-threaded runtime, as the
//! functions run (`#[tokio::main(flavor = "current_thread")]`): `BENCH_HELLO=` this
//! binary's name has `bench-coldstart` compare against it instead of the usual template's
//! multi-threaded runtime.

use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|_: LambdaEvent<serde_json::Value>| async {
        Ok::<_, Error>(serde_json::json!({ "statusCode": 200, "body": "hello" }))
    }))
    .await
}
