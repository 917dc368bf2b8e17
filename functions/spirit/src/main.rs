//! The spirit: SQS FIFO messages from `ws-message` (one per accepted question, grouped by
//! session) through the event source mapping. The handler is `seance::spirit::turn::Spirit::handle_batch`,
//! which the local harness's event source calls too.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent, service_fn};

// One event at a time, on a fraction of a vCPU: worker threads would only slow the start.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let spirit = seance::App::spirit_for_lambda();
    lambda_runtime::run(service_fn(|event: LambdaEvent<SqsEvent>| {
        let spirit = spirit.clone();
        async move {
            let deadline_ms = event.context.deadline;
            Ok::<SqsBatchResponse, Error>(spirit.handle_batch(event.payload, deadline_ms).await)
        }
    }))
    .await
}
