//! Replays every fuzz seed and every crash the fuzzer ever found through the same checks the
//! fuzz targets run (`ringmq::fuzzing`), so plain `cargo test` keeps each fixed decoder fixed.
//!
//! Inputs live in `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/`. The seeds are written
//! by the encoders: `RINGMQ_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_regressions` rewrites them.

use ringmq::fuzzing::{seeds, target, TARGETS};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every file under `fuzz/<kind>/<target>/`, with its target's name.
fn inputs(kind: &str) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(targets) = fs::read_dir(fuzz_dir().join(kind)) else {
        return out;
    };
    for dir in targets {
        let dir = dir.expect("readable directory entry").path();
        let name = dir
            .file_name()
            .expect("named")
            .to_string_lossy()
            .into_owned();
        for file in fs::read_dir(&dir).expect("readable target directory") {
            out.push((name.clone(), file.expect("readable entry").path()));
        }
    }
    out.sort();
    out
}

fn replay(kind: &str) -> usize {
    let inputs = inputs(kind);
    for (name, path) in &inputs {
        let target = target(name)
            .unwrap_or_else(|| panic!("{}: no fuzz target named `{name}`", path.display()));
        let bytes = fs::read(path).expect("readable input");
        let outcome = std::panic::catch_unwind(|| (target.check)(&bytes));
        assert!(
            outcome.is_ok(),
            "{} fails its target's check",
            path.display()
        );
    }
    inputs.len()
}

#[test]
fn every_regression_input_passes_its_check() {
    replay("regressions");
}

#[test]
fn every_seed_passes_its_check() {
    let replayed = replay("seeds");
    assert!(replayed >= TARGETS.len(), "only {replayed} seed files");
}

#[test]
fn every_target_has_seeds() {
    let with_seeds: BTreeSet<String> = inputs("seeds").into_iter().map(|(t, _)| t).collect();
    for t in TARGETS {
        assert!(
            with_seeds.contains(t.name),
            "no seeds for target `{}`",
            t.name
        );
    }
}

#[test]
fn committed_seeds_match_the_encoders() {
    let write = std::env::var_os("RINGMQ_WRITE_FUZZ_SEEDS").is_some();
    for seed in seeds() {
        let path = fuzz_dir().join("seeds").join(seed.target).join(&seed.name);
        if write {
            fs::create_dir_all(path.parent().expect("has a parent")).expect("create seed dir");
            fs::write(&path, &seed.bytes).expect("write seed");
            continue;
        }
        let committed = fs::read(&path).unwrap_or_default();
        assert!(
            committed == seed.bytes,
            "{} is out of date; rewrite the seeds with \
             RINGMQ_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_regressions",
            path.display()
        );
    }
}

#[test]
fn every_fuzz_binary_names_a_target() {
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let bins: BTreeSet<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "ringmq-fuzz")
        .collect();
    let names: BTreeSet<&str> = TARGETS.iter().map(|t| t.name).collect();
    assert_eq!(
        bins, names,
        "fuzz/Cargo.toml binaries and ringmq::fuzzing::TARGETS differ"
    );
}
