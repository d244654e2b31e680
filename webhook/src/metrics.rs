//! The webhook's Prometheus metrics, served as `/metrics` on the plain health port beside
//! `/livez` and `/readyz` (the registry is the elector crate's; see docs/metrics.md).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use ldap_elector_contract::metric;
use ldap_elector_contract::prometheus::{self as metrics, Family, Histogram, Kind, LabeledCounter2, Sample};

use crate::reconcile::leadership::Leadership;
use crate::tls::ReloadingCert;

/// `kind` of a body that was no AdmissionReview (its `outcome` is `malformed`).
pub const KIND_UNKNOWN: &str = "unknown";
pub const OUTCOME_MALFORMED: &str = "malformed";

#[derive(Debug)]
pub struct WebhookMetrics {
    reviews: LabeledCounter2,
    latency: Histogram,
    /// The certificate new handshakes get; its expiry is read at scrape, so rotations show.
    cert: OnceLock<Arc<ReloadingCert>>,
    /// Whether this replica reconciles (absent: the reconciler is off).
    reconciling: OnceLock<Leadership>,
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        WebhookMetrics {
            reviews: LabeledCounter2::new("kind", "outcome"),
            latency: Histogram::new(metrics::LATENCY_BUCKETS),
            cert: OnceLock::new(),
            reconciling: OnceLock::new(),
        }
    }
}

impl WebhookMetrics {
    /// One answered review of `kind` (`Pod`, `Service`) with `outcome` (admission's outcome names).
    pub fn review(&self, kind: &str, outcome: &str, took: Duration) {
        self.reviews.inc(kind, outcome);
        self.latency.observe_duration(took);
    }

    pub fn reviews(&self, kind: &str, outcome: &str) -> u64 {
        self.reviews.get(kind, outcome)
    }

    /// From now on, report the expiry of the certificate `cert` serves.
    pub fn serving(&self, cert: Arc<ReloadingCert>) {
        let _ = self.cert.set(cert);
    }

    /// From now on, report whether `leadership` lets this replica reconcile.
    pub fn reconciling(&self, leadership: Leadership) {
        let _ = self.reconciling.set(leadership);
    }

    pub fn gather(&self) -> Vec<Family> {
        let mut expiry = Family::new(
            metric::WEBHOOK_CERT_EXPIRY_TIMESTAMP_SECONDS,
            "notAfter of the serving certificate, in seconds since the Unix epoch.",
            Kind::Gauge,
        );
        if let Some(seconds) = self.cert.get().and_then(|c| expiry_seconds(&c.current().cert)) {
            expiry.samples.push(Sample { suffix: "", labels: Vec::new(), value: seconds });
        }
        let mut reconciling = Family::new(
            metric::WEBHOOK_RECONCILING,
            "1 on the replica that holds the reconciler Lease and reconciles, 0 on the others.",
            Kind::Gauge,
        );
        if let Some(leadership) = self.reconciling.get() {
            let value = if leadership.leading() { 1.0 } else { 0.0 };
            reconciling.samples.push(Sample { suffix: "", labels: Vec::new(), value });
        }
        vec![
            self.reviews
                .family(metric::WEBHOOK_REVIEWS_TOTAL, "Admission reviews answered, by object kind and outcome."),
            self.latency.family(
                metric::WEBHOOK_REVIEW_LATENCY_SECONDS,
                "Time from a decoded review to its answer, in seconds.",
            ),
            expiry,
            crate::reconcile::leader_service_empty_family(),
            reconciling,
        ]
    }

    pub fn render(&self) -> String {
        metrics::render(&self.gather())
    }
}

/// notAfter of the leaf of `chain`, in seconds since the epoch.
fn expiry_seconds(chain: &[rustls_pki_types::CertificateDer<'static>]) -> Option<f64> {
    let info = ldap_elector_certs::cert_info(chain.first()?).ok()?;
    Some(info.not_after.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_reviews_latency_and_the_certificate_expiry() {
        let m = WebhookMetrics::default();
        m.review("Pod", "injected", Duration::from_millis(3));
        m.review("Pod", "injected", Duration::from_millis(30));
        m.review(KIND_UNKNOWN, OUTCOME_MALFORMED, Duration::ZERO);
        let text = m.render();
        assert!(text.contains("ldap_elector_webhook_reviews_total{kind=\"Pod\",outcome=\"injected\"} 2\n"), "{text}");
        assert!(text.contains("ldap_elector_webhook_review_latency_seconds_count 3\n"), "{text}");
        assert!(!text.contains("\nldap_elector_webhook_certificate_expiry_timestamp_seconds "), "no cert yet: {text}");

        let ca = ldap_elector_certs::generate_ca("t", Duration::from_secs(3600)).unwrap();
        let serving = ldap_elector_certs::issue_serving(&ca, &["x".into()], &[], Duration::from_secs(7200)).unwrap();
        let (chain, key) =
            crate::tls::parse_pem(serving.cert_pem.as_bytes(), serving.key_pem.as_bytes(), "c", "k").unwrap();
        m.serving(Arc::new(ReloadingCert::new(chain, key).unwrap()));
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64();
        let expiry = m.gather()[2].samples[0].value;
        assert!(expiry > now && expiry <= now + 7200.0 + 1.0, "{expiry} vs now {now}");
        let names: Vec<&str> = m.gather().iter().map(|f| f.name).collect();
        assert_eq!(names, metric::WEBHOOK);
    }
}
