//! Buffered limit: while a workflow task runs, a run never holds more signal
//! payload bytes in its buffered rows than the service's
//! `buffered_payload_bytes_max` (followed write by write in storage, so a
//! limit passed and then flushed still shows).

use std::collections::BTreeMap;

use crate::world::storage::BufferedBytes;

use super::Violation;

/// Every run whose buffered signals ever passed `bytes_max`.
pub fn check_buffered_limit(
    buffered: &BTreeMap<String, BufferedBytes>,
    bytes_max: u64,
) -> Vec<Violation> {
    let over = buffered.iter().filter(|(_, bytes)| bytes.peak > bytes_max);
    over.map(|(run_id, bytes)| {
        let message = format!(
            "the run buffered {} bytes of signals while a workflow task ran; the limit is {bytes_max}",
            bytes.peak
        );
        let mut violation = Violation::new("buffered limit", message);
        violation.run_id = Some(run_id.clone());
        violation
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(peak: u64) -> BufferedBytes {
        BufferedBytes { now: 0, peak }
    }

    #[test]
    fn a_run_that_buffered_past_the_limit_is_caught_and_one_at_it_is_not() {
        let buffered = BTreeMap::from([
            ("at".to_string(), bytes(100)),
            ("over".to_string(), bytes(101)),
        ]);
        let violations = check_buffered_limit(&buffered, 100);
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].run_id.as_deref(), Some("over"));
        assert!(
            violations[0].message.contains("101 bytes"),
            "{}",
            violations[0]
        );
    }
}
