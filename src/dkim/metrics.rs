//! The DKIM counters: copies re-signed, original signatures renamed, and copies that broke a
//! signature and went out unsigned (no key aligned).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use super::Signed;

/// DKIM counters.
#[derive(Debug, Default)]
pub struct DkimMetrics {
    /// Copies bccguard signed.
    pub resigned: Counter,
    /// Original signatures renamed `X-Original-DKIM-Signature`.
    pub renamed: Counter,
    /// Copies that broke an original signature and were sent unsigned.
    pub unsigned_broken: Counter,
    /// Messages held because no key aligned (`dkim.unsigned = "hold"`).
    pub held: Counter,
}

impl DkimMetrics {
    /// Register the counters in `registry`.
    pub fn register(registry: &mut Registry) -> DkimMetrics {
        let m = DkimMetrics::default();
        registry.register("dkim_resigned_copies", "Copies signed by bccguard", m.resigned.clone());
        registry.register(
            "dkim_renamed_signatures",
            "Original DKIM signatures a copy broke, renamed X-Original-DKIM-Signature",
            m.renamed.clone(),
        );
        registry.register(
            "dkim_unsigned_broken_copies",
            "Copies that broke an original DKIM signature and went out unsigned (no key aligned)",
            m.unsigned_broken.clone(),
        );
        registry.register(
            "dkim_held_messages",
            "Messages held because they were signed and no key aligned (dkim.unsigned = hold)",
            m.held.clone(),
        );
        m
    }

    /// Count what was done to one copy.
    pub fn count(&self, s: &Signed) {
        if s.resigned {
            self.resigned.inc();
        }
        if s.renamed > 0 {
            self.renamed.inc_by(s.renamed as u64);
        }
        if s.unsigned_broken {
            self.unsigned_broken.inc();
        }
    }
}
