//! The deploy step that migrates the database, inside the VPC that can reach it:
//! `aws lambda invoke --function-name <MigrateFunction> --payload '{"action":"up"}' out.json`
//! (`up`, `down` or `status`). Never run on another function's cold start.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use seance::store::MigrationAction;

// One event at a time, on a fraction of a vCPU: worker threads would only slow the start.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let database = seance::App::database_for_lambda();
    lambda_runtime::run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        let database = database.clone();
        async move {
            let action: MigrationAction = serde_json::from_value(event.payload["action"].clone())
                .map_err(|_| {
                Error::from("give {\"action\": \"up\" | \"down\" | \"status\"}")
            })?;
            let report = database.migrate(action).await?;
            Ok::<_, Error>(serde_json::to_value(report)?)
        }
    }))
    .await
}
