//! Runs the embedding example (examples/embed.rs) and checks what it saw.

#[path = "../examples/embed.rs"]
mod embed;

#[tokio::test]
async fn the_embedding_example_streams_and_cancels() {
    let t = embed::walkthrough().await.expect("walkthrough");
    let events: Vec<&str> = t
        .first
        .iter()
        .map(|l| l.split(':').next().unwrap_or(""))
        .collect();
    assert_eq!(
        events,
        ["started", "token", "token", "token", "token", "token", "end"]
    );
    assert!(
        t.first[6].contains("\"finish_reason\":\"length\""),
        "{:?}",
        t.first
    );
    assert!(t.first[0].contains("\"engine\":\"mock\""));
    assert!(t.tokens_before_cancel >= 3 && t.tokens_before_cancel < 1000);
    assert!(
        t.canceled.starts_with("end:") && t.canceled.contains("\"canceled\""),
        "{}",
        t.canceled
    );
}
