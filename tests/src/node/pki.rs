//! The node's key material, fresh per bed: a node CA that signs the kubelet's serving
//! certificate (the API server verifies it with `--kubelet-certificate-authority`) and the API
//! server's client certificate towards the kubelet (the kubelet trusts the node CA as its
//! x509 client CA). The kubelet itself authenticates to the API server with a bearer token.

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};

use super::config::{APISERVER_KUBELET_CLIENT, NODE_IP, NODE_NAME};
use crate::bed::pki::test_ca;

pub struct NodePki {
    pub ca_pem: String,
    pub kubelet_cert_pem: String,
    pub kubelet_key_pem: String,
    pub apiserver_client_cert_pem: String,
    pub apiserver_client_key_pem: String,
}

impl NodePki {
    pub fn generate() -> anyhow::Result<NodePki> {
        let (ca_pem, issuer) = test_ca("ldap-elector test bed node CA")?;

        let kubelet_key = KeyPair::generate()?;
        let mut kubelet = CertificateParams::new(vec![NODE_NAME.to_string()])?;
        kubelet.subject_alt_names.push(SanType::IpAddress(NODE_IP.into()));
        kubelet.distinguished_name.push(DnType::CommonName, format!("system:node:{NODE_NAME}"));
        kubelet.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let kubelet_cert = kubelet.signed_by(&kubelet_key, &issuer)?;

        let client_key = KeyPair::generate()?;
        let mut client = CertificateParams::new(Vec::<String>::new())?;
        client.distinguished_name.push(DnType::CommonName, APISERVER_KUBELET_CLIENT);
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client.signed_by(&client_key, &issuer)?;

        Ok(NodePki {
            ca_pem,
            kubelet_cert_pem: kubelet_cert.pem(),
            kubelet_key_pem: kubelet_key.serialize_pem(),
            apiserver_client_cert_pem: client_cert.pem(),
            apiserver_client_key_pem: client_key.serialize_pem(),
        })
    }

    /// (file name under the node's pki dir, contents)
    pub fn files(&self) -> [(&'static str, &str); 5] {
        [
            ("node-ca.crt", &self.ca_pem),
            ("kubelet.crt", &self.kubelet_cert_pem),
            ("kubelet.key", &self.kubelet_key_pem),
            ("apiserver-kubelet-client.crt", &self.apiserver_client_cert_pem),
            ("apiserver-kubelet-client.key", &self.apiserver_client_key_pem),
        ]
    }
}
