package licensing

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
)

// newKeyAndCSR makes a fresh ECDSA P-256 key and a CSR for it: only the CSR leaves.
// The server sets the certificate's subject itself; the CN here is a courtesy.
func newKeyAndCSR(commonName string) (*ecdsa.PrivateKey, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, "", err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:            pkix.Name{CommonName: commonName},
		SignatureAlgorithm: x509.ECDSAWithSHA256,
	}, key)
	if err != nil {
		return nil, "", err
	}
	return key, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), nil
}

func firstCertificate(pemText string) (*x509.Certificate, error) {
	rest := []byte(pemText)
	for {
		block, more := pem.Decode(rest)
		if block == nil {
			return nil, errors.New("no certificate in PEM")
		}
		if block.Type == "CERTIFICATE" {
			return x509.ParseCertificate(block.Bytes)
		}
		rest = more
	}
}

// CertificateSHA256 is the SHA-256 of a certificate's DER (what enclaves report as identity).
func CertificateSHA256(certificatePEM string) ([]byte, error) {
	cert, err := firstCertificate(certificatePEM)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(cert.Raw)
	return sum[:], nil
}

// VerifySignature says whether a DER ECDSA signature (SHA-256, as enclaves sign) by the
// certificate's key covers data.
func VerifySignature(certificatePEM string, data, signature []byte) bool {
	cert, err := firstCertificate(certificatePEM)
	if err != nil {
		return false
	}
	key, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return false
	}
	digest := sha256.Sum256(data)
	return ecdsa.VerifyASN1(key, digest[:], signature)
}
