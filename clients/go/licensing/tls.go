package licensing

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// caTLSConfig verifies the licensing server against the licensing CA only, and presents
// the client certificate getCert returns (nil: none, for the enrollment listener).
func caTLSConfig(anchors []string, getCert func(*tls.CertificateRequestInfo) (*tls.Certificate, error)) (*tls.Config, error) {
	pool := x509.NewCertPool()
	for _, pem := range anchors {
		if !pool.AppendCertsFromPEM([]byte(pem)) {
			return nil, errors.New("licensing: a CA certificate does not parse")
		}
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, GetClientCertificate: getCert}, nil
}

// PinnedTLSConfig trusts exactly one certificate, the peer's own (pinnedPEM), and presents
// the client certificate getCert returns. The peer's leaf must be byte for byte the pinned
// certificate (SHA-256 of the DER compared): any other fails the handshake, even one from
// the same CA for the same name, so nothing (no access token) is sent to it. serverName
// (SNI) must be one of the pinned certificate's names, which must be within its validity.
func PinnedTLSConfig(pinnedPEM, serverName string, getCert func(*tls.CertificateRequestInfo) (*tls.Certificate, error)) (*tls.Config, error) {
	pinned, err := firstCertificate(pinnedPEM)
	if err != nil {
		return nil, fmt.Errorf("licensing: the pinned certificate does not parse: %w", err)
	}
	want := sha256.Sum256(pinned.Raw)
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: serverName,
		// The chain is not verified against any CA: VerifyPeerCertificate accepts the
		// pinned certificate and nothing else, which is stricter.
		InsecureSkipVerify: true, //nolint:gosec // replaced by the pin below
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			if len(rawCerts) == 0 {
				return errors.New("licensing: the enclave presented no certificate")
			}
			got := sha256.Sum256(rawCerts[0])
			if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
				return fmt.Errorf("licensing: the enclave presented certificate %s, not the attested %s",
					hex.EncodeToString(got[:]), hex.EncodeToString(want[:]))
			}
			if now := time.Now(); now.Before(pinned.NotBefore) || now.After(pinned.NotAfter) {
				return errors.New("licensing: the attested certificate is outside its validity")
			}
			if serverName != "" {
				if err := pinned.VerifyHostname(serverName); err != nil {
					return fmt.Errorf("licensing: the attested certificate is not for %q: %w", serverName, err)
				}
			}
			return nil
		},
		GetClientCertificate: getCert,
	}, nil
}
