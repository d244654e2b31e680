//! Key material for one test bed, generated fresh each time (never committed).

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};

/// A fresh self-signed CA named `common_name`: its certificate (PEM) and the issuer that signs with it.
pub(crate) fn test_ca(common_name: &str) -> anyhow::Result<(String, Issuer<'static, KeyPair>)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

pub struct BedPki {
    pub ca_pem: String,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    /// Service-account token signing key (ECDSA P-256, PKCS#8) and its public key.
    pub sa_key_pem: String,
    pub sa_pub_pem: String,
    /// The CA of the API server's client certificate for admission webhooks, and that
    /// certificate and key.
    pub webhook_client_ca_pem: String,
    pub webhook_client_cert_pem: String,
    pub webhook_client_key_pem: String,
}

impl BedPki {
    pub fn generate() -> anyhow::Result<BedPki> {
        let (ca_pem, issuer) = test_ca("ldap-elector test bed CA")?;

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
        let (webhook_client_ca_pem, client_issuer) = test_ca("ldap-elector test bed webhook client CA")?;
        let client_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, "kube-apiserver-webhook-client");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = params.signed_by(&client_key, &client_issuer)?;
        Ok(BedPki {
            ca_pem,
            serving_cert_pem: cert.pem(),
            serving_key_pem: key.serialize_pem(),
            sa_key_pem: sa.serialize_pem(),
            sa_pub_pem: sa.public_key_pem(),
            webhook_client_ca_pem,
            webhook_client_cert_pem: client.pem(),
            webhook_client_key_pem: client_key.serialize_pem(),
        })
    }
}
