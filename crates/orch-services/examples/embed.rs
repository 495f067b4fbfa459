//! Embedding orchestratord's services in a Rust program, without HTTP: build the
//! services with a mock pool in-process, submit a task, stream it to its end, then
//! submit a long one and cancel it mid-stream.
//!
//! Run: `cargo run -p orch-services --example embed`
//! (tests/embed_example.rs runs the same code and checks what it returns.)

use adapter_mock::{MockConfig, MockEngine};
use orch_domain::{EventKind, Priority, TaskRequest};
use orch_services::{Caller, Orchestrator, PoolSpec, Read, ServiceConfig};
use std::sync::Arc;
use std::time::Duration;

/// What the walkthrough saw.
#[derive(Debug)]
pub struct Transcript {
    /// SSE-style lines of the first task (`event: data`).
    pub first: Vec<String>,
    /// The canceled task's terminal frame (`event: data`).
    pub canceled: String,
    pub tokens_before_cancel: usize,
}

pub async fn walkthrough() -> Result<Transcript, Box<dyn std::error::Error>> {
    // 1. the services and one pool with one in-process mock replica
    let orch = Orchestrator::new(ServiceConfig::default());
    orch.registry()
        .create(PoolSpec::new("local", "mock-model"))?;
    let engine = MockEngine::new(MockConfig {
        slots: 2,
        tokens_per_sec: 200.0,
        tokens: 1000,
        ..MockConfig::default()
    });
    orch.registry()
        .add_replica("local", "local-r0", Arc::new(engine))
        .await?;

    // 2. submit and stream to the end
    let req = TaskRequest::completion("mock-model", "Hello", 5, Priority::Interactive);
    let adm = orch.admit(&Caller::open(), req, "embed-example").await?;
    let mut reader = orch.open_stream(&Caller::open(), adm.task_id, 0).await?;
    let mut first = Vec::new();
    while let Some(item) = reader
        .next_with(Duration::from_secs(5), |f| {
            first.push(format!("{}: {}", f.kind, f.data))
        })
        .await
    {
        if item == Read::KeepAlive {
            return Err("the engine went quiet".into());
        }
    }

    // 3. a long task, canceled after its third token
    let req = TaskRequest::completion("mock-model", "Count to a thousand", 1000, Priority::Batch);
    let adm = orch.admit(&Caller::open(), req, "embed-example").await?;
    let mut reader = orch.open_stream(&Caller::open(), adm.task_id, 0).await?;
    let (mut tokens, mut canceled, mut asked) = (0, String::new(), false);
    while let Some(_item) = reader
        .next_with(Duration::from_secs(5), |f| match f.kind {
            EventKind::Token => tokens += 1,
            EventKind::End | EventKind::Error => canceled = format!("{}: {}", f.kind, f.data),
            EventKind::Started | EventKind::Metrics => {}
        })
        .await
    {
        if tokens >= 3 && !asked {
            orch.cancel(&Caller::open(), adm.task_id).await?;
            asked = true;
        }
    }
    Ok(Transcript {
        first,
        canceled,
        tokens_before_cancel: tokens,
    })
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let t = walkthrough().await?;
    for line in &t.first {
        println!("{line}");
    }
    println!(
        "canceled after {} tokens -> {}",
        t.tokens_before_cancel, t.canceled
    );
    Ok(())
}
