//! Every seed in `fixtures/seeds/regressions.txt` keeps passing.

use retrace_sim::workloads;

#[test]
fn every_seed_that_ever_failed_now_passes() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/seeds/regressions.txt"
    );
    let text = std::fs::read_to_string(path).expect("the regressions file exists");
    let mut count = 0;
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(name), Some(seed), None) = (fields.next(), fields.next(), fields.next()) else {
            panic!(
                "regressions.txt line {}: expected `<scenario> <seed>  # why`, got {line:?}",
                number + 1
            );
        };
        let seed: u64 = seed
            .parse()
            .unwrap_or_else(|_| panic!("line {}: seed {seed:?} is not a number", number + 1));
        let scenario = workloads::by_name(name)
            .unwrap_or_else(|| panic!("line {}: no scenario {name:?}", number + 1));
        if let Err(report) = scenario.into_runner().check_seed(seed) {
            panic!("regression {name} seed {seed} fails again:{report}");
        }
        count += 1;
    }
    assert!(count >= 2, "the file lists the regressions found so far");
}
