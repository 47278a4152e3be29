//! Test support for the property tests of the parsers of hostile bytes
//! (changesets, image layouts): one way to run a `proptest` strategy, and
//! the checks every error message passes.
//!
//! # Reproducible runs
//!
//! Every run starts from the same seed and nothing is persisted: a property
//! that fails, fails the same way in CI, on a developer's machine and in a
//! rerun, and the report names the minimized input that broke it (a
//! regression test is then written from it by hand, as an ordinary test
//! next to the code). proptest's default, a random seed plus
//! `proptest-regressions/` files, makes a failure in CI a lottery and
//! leaves files to commit from wherever the failure happened.
//!
//! To search further locally, the usual variables still apply:
//! `PROPTEST_RNG_SEED=<u64>` picks another seed and `PROPTEST_CASES=<n>`
//! another number of cases, e.g.
//! `PROPTEST_RNG_SEED=7 PROPTEST_CASES=20000 cargo test plain_changeset_never_panics`.

use std::fmt::Debug;
use std::time::Instant;

use proptest::strategy::Strategy;
use proptest::test_runner::{
    Config, RngAlgorithm, RngSeed, TestCaseError, TestCaseResult, TestError, TestRunner,
};

/// The seed of every property test run ("thinlayr").
const SEED: u64 = 0x7468_696e_6c61_7972;

/// A runner of `cases` cases from the fixed seed, without failure
/// persistence; `PROPTEST_CASES` and `PROPTEST_RNG_SEED` override.
fn runner(cases: u32) -> TestRunner {
    let from_env = Config::default();
    let set = |var: &str| std::env::var_os(var).is_some();
    let config = Config {
        cases: if set("PROPTEST_CASES") {
            from_env.cases
        } else {
            cases
        },
        rng_seed: if set("PROPTEST_RNG_SEED") {
            from_env.rng_seed
        } else {
            RngSeed::Fixed(SEED)
        },
        rng_algorithm: RngAlgorithm::ChaCha,
        failure_persistence: None,
        // Shrinking replays the case (files made, an apply): bound it so
        // that a failure is reported in seconds, not minutes.
        max_shrink_iters: 2_000,
        ..from_env
    };
    TestRunner::new(config)
}

/// Runs `test` on `cases` values of `strategy`; panics with the minimized
/// failing value and the reason if one fails (a panic inside `test` counts
/// as a failure: proptest catches it and shrinks the input). Prints the
/// case count and the time taken.
#[track_caller]
pub(crate) fn check<S>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> TestCaseResult,
) where
    S: Strategy,
    S::Value: Debug,
{
    let mut runner = runner(cases);
    let cases = runner.config().cases;
    let start = Instant::now();
    match runner.run(&strategy, test) {
        Ok(()) => eprintln!(
            "{name}: {cases} cases passed in {:.1} s",
            start.elapsed().as_secs_f64()
        ),
        Err(TestError::Fail(reason, value)) => {
            panic!("{name}: property failed: {reason}\nminimal failing input: {value:#?}")
        }
        Err(TestError::Abort(reason)) => panic!("{name}: aborted: {reason}"),
    }
}

/// Fails the case unless `msg` is one non-empty line: no line break of any
/// kind (a `\r` rewrites the line it is on in a terminal, so it counts).
pub(crate) fn one_line(msg: &str) -> TestCaseResult {
    if msg.trim().is_empty() {
        return Err(TestCaseError::fail("an empty error message"));
    }
    if msg.contains(['\n', '\r']) {
        return Err(TestCaseError::fail(format!(
            "an error message spans lines: {msg:?}"
        )));
    }
    Ok(())
}
