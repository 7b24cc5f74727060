package licensing

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"licensing.internal/clients/go/attestation"
	enclavev1 "licensing.internal/clients/go/gen/enclave/v1"
	licensingv1 "licensing.internal/clients/go/gen/licensing/v1"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert, key}
}

// issue makes a leaf for name (and 127.0.0.1) signed by the CA.
func (ca *testCA) issue(t *testing.T, serial int64, name string) (tls.Certificate, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{name}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// recordingWorkload is an enclave that notes every authorization header it receives.
type recordingWorkload struct {
	enclavev1.UnimplementedWorkloadServiceServer
	mu     sync.Mutex
	tokens []string
}

func (w *recordingWorkload) GetIdentity(ctx context.Context, _ *enclavev1.GetIdentityRequest) (*enclavev1.GetIdentityResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	w.mu.Lock()
	w.tokens = append(w.tokens, md.Get("authorization")...)
	w.mu.Unlock()
	return &enclavev1.GetIdentityResponse{EnclaveId: "e1"}, nil
}

func serveEnclave(t *testing.T, cert tls.Certificate) (string, *recordingWorkload) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	workload := &recordingWorkload{}
	server := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAnyClientCert,
	})))
	enclavev1.RegisterWorkloadServiceServer(server, workload)
	go func() { _ = server.Serve(lis) }()
	t.Cleanup(server.Stop)
	return lis.Addr().String(), workload
}

// loggedInClient is a client holding a session (as LogIn leaves it) with a client certificate of ca.
func loggedInClient(t *testing.T, ca *testCA) *Client {
	t.Helper()
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
	c, err := New(Config{EnrollAddr: "127.0.0.1:1", APIAddr: "127.0.0.1:1", CAPEM: caPEM, RPCTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	pair, certPEM := ca.issue(t, 99, "alice")
	far := time.Now().Add(24 * time.Hour)
	session := &Session{
		Username: "alice", AccessToken: "the-access-token", AccessTokenExpireTime: far,
		RefreshToken: "r", RefreshTokenExpireTime: far, ClientCertificatePEM: certPEM,
		ClientKey: pair.PrivateKey.(*ecdsa.PrivateKey), ClientCertificateExpireTime: far,
	}
	if err := session.bindCertificate(); err != nil {
		t.Fatal(err)
	}
	c.adopt(session)
	return c
}

func attestedAt(endpoint, certPEM string) *EnclaveAttestation {
	return &EnclaveAttestation{
		Enclave: &licensingv1.Enclave{Id: "e1", Endpoint: endpoint, TlsServerName: "e1.enclaves.test", CertificatePem: certPEM},
		Report:  &attestation.Report{},
	}
}

// An endpoint presenting another certificate of the same CA, for the same name, fails
// the handshake: the call never reaches it and the token is never sent.
func TestPinnedConnectionRefusesAnotherCertificateOfTheSameCA(t *testing.T) {
	ca := newTestCA(t)
	_, attestedPEM := ca.issue(t, 2, "e1.enclaves.test")
	impostor, _ := ca.issue(t, 3, "e1.enclaves.test")
	addr, workload := serveEnclave(t, impostor)
	client := loggedInClient(t, ca)

	session, err := client.ConnectAttested(attestedAt(addr, attestedPEM))
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	_, err = session.GetIdentity(context.Background())
	var refused *Error
	if err == nil || !asError(err, &refused) || refused.Code != codes.Unavailable {
		t.Fatalf("want the handshake refused (UNAVAILABLE), got %v", err)
	}
	if !strings.Contains(err.Error(), "not the attested") {
		t.Fatalf("refused for another reason: %v", err)
	}
	if len(workload.tokens) != 0 {
		t.Fatalf("the impostor received %v", workload.tokens)
	}
}

// The attested certificate itself is accepted, and the call carries the token.
func TestPinnedConnectionAcceptsTheAttestedCertificate(t *testing.T) {
	ca := newTestCA(t)
	attested, attestedPEM := ca.issue(t, 2, "e1.enclaves.test")
	addr, workload := serveEnclave(t, attested)
	client := loggedInClient(t, ca)

	session, err := client.ConnectAttested(attestedAt(addr, attestedPEM))
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	identity, err := session.GetIdentity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if identity.EnclaveID != "e1" || len(workload.tokens) != 1 || workload.tokens[0] != "Bearer the-access-token" {
		t.Fatalf("identity %+v, tokens %v", identity, workload.tokens)
	}
}

// The pinned certificate must name the server name we dial.
func TestPinnedConnectionChecksTheServerName(t *testing.T) {
	ca := newTestCA(t)
	attested, attestedPEM := ca.issue(t, 2, "other.enclaves.test")
	addr, workload := serveEnclave(t, attested)
	client := loggedInClient(t, ca)
	session, err := client.ConnectAttested(attestedAt(addr, attestedPEM))
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	if _, err := session.GetIdentity(context.Background()); status.Code(errorsCause(err)) != codes.Unavailable {
		t.Fatalf("want UNAVAILABLE, got %v", err)
	}
	if len(workload.tokens) != 0 {
		t.Fatalf("received %v", workload.tokens)
	}
}

func asError(err error, target **Error) bool { return errors.As(err, target) }

func errorsCause(err error) error {
	var e *Error
	if errors.As(err, &e) {
		return e.cause
	}
	return err
}
