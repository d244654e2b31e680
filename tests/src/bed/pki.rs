//! Key material for one test bed, generated fresh each time (never committed).

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};

pub struct BedPki {
    pub ca_pem: String,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    /// Service-account token signing key (ECDSA P-256, PKCS#8) and its public key.
    pub sa_key_pem: String,
    pub sa_pub_pem: String,
}

impl BedPki {
    pub fn generate() -> anyhow::Result<BedPki> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name.push(DnType::CommonName, "ldap-elector test bed CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "kubernetes.default.svc".to_string()])?;
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse()?));
        // The real node's API server address and the `kubernetes` Service IP pods connect to.
        for ip in [crate::node::config::NODE_IP, crate::node::config::KUBERNETES_SERVICE_IP] {
            params.subject_alt_names.push(SanType::IpAddress(ip.into()));
        }
        params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &issuer)?;

        let sa = KeyPair::generate()?;
        Ok(BedPki {
            ca_pem: ca_cert.pem(),
            serving_cert_pem: cert.pem(),
            serving_key_pem: key.serialize_pem(),
            sa_key_pem: sa.serialize_pem(),
            sa_pub_pem: sa.public_key_pem(),
        })
    }
}
