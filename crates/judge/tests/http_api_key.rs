//! The HTTP judge's API key comes from the environment variable its config names. Its own test
//! binary with a single test: the variables are set before any other thread exists, since
//! changing the environment while other threads may read it (reqwest reads proxy variables
//! when building a client) is a data race.

mod fault_server;

use fault_server::*;
use judge::{HttpJudge, Judge, JudgeFailure};

#[test]
fn api_key_comes_from_the_named_variable_and_never_shows() {
    let (unset, good, wrong) = (
        "ARLRR_TEST_JUDGE_KEY_UNSET",
        "ARLRR_TEST_JUDGE_KEY_GOOD",
        "ARLRR_TEST_JUDGE_KEY_WRONG",
    );
    std::env::remove_var(unset);
    std::env::set_var(good, "sekrit-token-123");
    std::env::set_var(wrong, "wrong");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (addr, _fault) = spawn_fault_server().await;
        let with_key = |var: &str| {
            let mut cfg = config(addr);
            cfg.api_key_env = Some(var.into());
            HttpJudge::new(cfg)
        };
        let err = with_key(unset).unwrap_err().to_string();
        assert!(err.contains(unset), "{err}");

        let judge = with_key(good).unwrap();
        assert!(!format!("{judge:?}").contains("sekrit"));
        let g = grade_all(&judge, &example(&["auth"])).await;
        assert_eq!(g[0].outcome, Ok(1.0));

        // A rejected key is not retried: retrying cannot fix it.
        let judge = with_key(wrong).unwrap();
        let g = grade_all(&judge, &example(&["auth"])).await;
        assert_eq!(g[0].attempts, 1);
        assert_eq!(judge.stats().calls, 1);
        match &g[0].outcome {
            Err(JudgeFailure::Other(m)) => {
                assert!(m.contains("401") && !m.contains("wrong"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    });
}
