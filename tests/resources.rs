//! Resource limits on real guests: a memory bomb stopped at its limit with an OOMKilled reason
//! while its sibling keeps running, a deep recursion stopped at the stack limit, and a busy
//! container held to a CPU share while a TCP sibling keeps answering.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmpod::spec::Resources;
use wasmpod::{ContainerState, Exit, PodPhase, RestartPolicy};

const MIB: u64 = 1 << 20;

#[tokio::test]
async fn a_memory_bomb_is_stopped_at_its_limit_and_its_sibling_keeps_running() {
    let mut spec = pod_spec("oom", RestartPolicy::Never);
    let mut bomb = toolbox("bomb", &["alloc-mib", "1024"]);
    bomb.resources = Resources {
        memory: Some(64 * MIB),
        cpu: None,
    };
    let mut modest = toolbox("modest", &["alloc-mib", "16"]);
    modest.resources = Resources {
        memory: Some(64 * MIB),
        cpu: None,
    };
    spec.containers = vec![bomb, modest, toolbox("sibling", &["serve-forever", "5"])];
    let pod = pod(spec);
    pod.start().await.unwrap();
    wait_until(&pod, "the bomb to die", |pod| {
        matches!(
            pod.status().container("bomb").unwrap().state,
            ContainerState::Terminated { .. }
        )
    })
    .await;
    let status = pod.status();
    match &status.container("bomb").unwrap().last_exit {
        Some(exit @ Exit::OutOfMemory { limit, .. }) => {
            assert_eq!(*limit, 64 * MIB);
            assert!(
                exit.to_string().starts_with("OOMKilled: memory limit of 64MiB reached"),
                "{exit}"
            );
        }
        other => panic!("expected OutOfMemory, got {other:?}\n{}", explain(&pod)),
    }
    // It got close to its limit before failing: the limit, not something else, stopped it.
    assert!(
        lines(&pod, "bomb").iter().any(|l| l == "allocated 48 MiB"),
        "{}",
        explain(&pod)
    );
    wait_until(&pod, "the modest container to finish", |pod| {
        pod.status().container("modest").unwrap().last_exit == Some(Exit::Code(0))
    })
    .await;
    assert!(lines(&pod, "modest").contains(&"holding 16 MiB".to_string()));
    let before = lines(&pod, "sibling").len();
    wait_until(&pod, "the sibling to keep running", |pod| {
        lines(pod, "sibling").len() > before + 2
    })
    .await;
    assert!(matches!(
        pod.status().container("sibling").unwrap().state,
        ContainerState::Running { .. }
    ));
    pod.stop().await;
}

#[tokio::test]
async fn deep_recursion_traps_at_the_stack_limit() {
    let mut spec = pod_spec("stack", RestartPolicy::Never);
    spec.containers = vec![toolbox("deep", &["recurse"])];
    let pod = pod(spec);
    let status = run_to_end(&pod).await;
    assert!(matches!(status.phase, PodPhase::Failed { .. }));
    match &status.container("deep").unwrap().last_exit {
        Some(Exit::Trapped(message)) => assert!(message.contains("call stack exhausted"), "{message}"),
        other => panic!("expected a stack overflow trap, got {other:?}"),
    }
}

// A current-thread runtime, as `#[tokio::test]` users get: the hardest case for fairness.
#[tokio::test]
async fn a_throttled_busy_loop_never_starves_a_tcp_sibling() {
    let mut spec = pod_spec("cpu", RestartPolicy::Never);
    let mut spinner = toolbox("spinner", &["spin"]);
    spinner.resources = Resources {
        memory: None,
        cpu: Some(0.25),
    };
    let mut greedy = toolbox("greedy", &["spin"]); // unlimited, but still made to yield
    greedy.resources = Resources::default();
    let server = netcheck("server", "listen 0.0.0.0:5000 && echo 20");
    spec.containers = vec![spinner, greedy, server];
    let pod = pod(spec);
    pod.start().await.unwrap();
    tokio::time::timeout(DEADLINE, pod.network().wait_listening(5000))
        .await
        .expect("server listens");
    for round in 0..20u32 {
        let mut stream = pod.network().connect(5000).expect("connect");
        let message = format!("round {round}");
        stream.write_all(message.as_bytes()).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut echoed = String::new();
        tokio::time::timeout(DEADLINE, stream.read_to_string(&mut echoed))
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(echoed, message);
    }
    let status = pod.status();
    assert!(
        matches!(
            status.container("spinner").unwrap().state,
            ContainerState::Running { .. }
        ),
        "throttled, not killed"
    );
    pod.stop().await;
}
