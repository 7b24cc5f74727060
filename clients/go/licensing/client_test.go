package licensing

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	licensingv1 "licensing.internal/clients/go/gen/licensing/v1"
)

// fakeLicensing answers as the licensing server does, scripted per test: Login signs the
// CSR with the test CA, and each RPC records the bearer tokens it saw.
type fakeLicensing struct {
	licensingv1.UnimplementedAuthServiceServer
	licensingv1.UnimplementedEnclaveServiceServer
	ca *testCA

	mu             sync.Mutex
	tokens         []string
	refreshes      int
	currentUserErr []error // returned by GetCurrentUser in turn, then success
	create         func(*licensingv1.CreateEnclaveRequest, licensingv1.EnclaveService_CreateEnclaveServer) error
	watch          func(*licensingv1.WatchEnclaveRequest, licensingv1.EnclaveService_WatchEnclaveServer) error
}

func (f *fakeLicensing) Login(_ context.Context, req *licensingv1.LoginRequest) (*licensingv1.LoginResponse, error) {
	block, _ := pem.Decode([]byte(req.GetCsrPem()))
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "bad CSR")
	}
	expire := time.Now().Add(24 * time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: req.GetUsername()},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: expire,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, f.ca.cert, csr.PublicKey, f.ca.key)
	if err != nil {
		return nil, err
	}
	return &licensingv1.LoginResponse{
		AccessToken: "t1", RefreshToken: "r1", UserId: "u1",
		AccessTokenExpireTime:       timestamppb.New(time.Now().Add(time.Hour)),
		RefreshTokenExpireTime:      timestamppb.New(expire),
		ClientCertificatePem:        string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		ClientCertificateExpireTime: timestamppb.New(expire),
	}, nil
}

func (f *fakeLicensing) RefreshToken(context.Context, *licensingv1.RefreshTokenRequest) (*licensingv1.RefreshTokenResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refreshes++
	return &licensingv1.RefreshTokenResponse{
		AccessToken: "t2", RefreshToken: "r2",
		AccessTokenExpireTime: timestamppb.New(time.Now().Add(time.Hour)),
	}, nil
}

func (f *fakeLicensing) record(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens = append(f.tokens, md.Get("authorization")...)
}

func (f *fakeLicensing) GetCurrentUser(ctx context.Context, _ *licensingv1.GetCurrentUserRequest) (*licensingv1.GetCurrentUserResponse, error) {
	f.record(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.currentUserErr) > 0 {
		err := f.currentUserErr[0]
		f.currentUserErr = f.currentUserErr[1:]
		return nil, err
	}
	return &licensingv1.GetCurrentUserResponse{User: &licensingv1.User{Id: "u1", Username: "alice"}}, nil
}

func (f *fakeLicensing) CreateEnclave(req *licensingv1.CreateEnclaveRequest, stream licensingv1.EnclaveService_CreateEnclaveServer) error {
	f.record(stream.Context())
	return f.create(req, stream)
}

func (f *fakeLicensing) WatchEnclave(req *licensingv1.WatchEnclaveRequest, stream licensingv1.EnclaveService_WatchEnclaveServer) error {
	f.record(stream.Context())
	return f.watch(req, stream)
}

// startFake serves fake on one TLS listener (both enrollment and API) and logs a client in.
func startFake(t *testing.T, fake *fakeLicensing) *Client {
	t.Helper()
	fake.ca = newTestCA(t)
	serverCert, _ := fake.ca.issue(t, 2, "localhost")
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.VerifyClientCertIfGiven,
		ClientCAs: poolOf(fake.ca.cert),
	})))
	licensingv1.RegisterAuthServiceServer(server, fake)
	licensingv1.RegisterEnclaveServiceServer(server, fake)
	go func() { _ = server.Serve(lis) }()
	t.Cleanup(server.Stop)
	addr := lis.Addr().String()
	client, err := New(Config{
		EnrollAddr: addr, APIAddr: addr, RPCTimeout: 5 * time.Second,
		CAPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: fake.ca.cert.Raw}),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	if _, err := client.LogIn(context.Background(), "alice", "password"); err != nil {
		t.Fatal(err)
	}
	return client
}

func poolOf(cert *x509.Certificate) *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool
}

func withReason(code codes.Code, reason string, retry time.Duration) error {
	st, _ := status.New(code, reason).WithDetails(&errdetails.ErrorInfo{Reason: reason})
	if retry > 0 {
		st, _ = st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(retry)})
	}
	return st.Err()
}

// A call answered TOKEN_EXPIRED is refreshed once and retried with the new token.
func TestExpiredTokenIsRefreshedAndTheCallRetried(t *testing.T) {
	fake := &fakeLicensing{currentUserErr: []error{withReason(codes.Unauthenticated, "TOKEN_EXPIRED", 0)}}
	client := startFake(t, fake)
	user, err := client.CurrentUser(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if user.GetUsername() != "alice" || fake.refreshes != 1 {
		t.Fatalf("user %v after %d refreshes", user, fake.refreshes)
	}
	if len(fake.tokens) != 2 || fake.tokens[0] != "Bearer t1" || fake.tokens[1] != "Bearer t2" {
		t.Fatalf("tokens %v", fake.tokens)
	}
}

// A brief rate limit (RESOURCE_EXHAUSTED, RATE_LIMITED, RetryInfo) is waited out.
func TestBriefRateLimitIsWaitedOut(t *testing.T) {
	fake := &fakeLicensing{currentUserErr: []error{withReason(codes.ResourceExhausted, "RATE_LIMITED", 20*time.Millisecond)}}
	client := startFake(t, fake)
	if _, err := client.CurrentUser(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(fake.tokens) != 2 {
		t.Fatalf("calls %v", fake.tokens)
	}
}

// Any other refusal is an *Error carrying the code and the ErrorInfo reason.
func TestRefusalCarriesCodeAndReason(t *testing.T) {
	fake := &fakeLicensing{currentUserErr: []error{withReason(codes.PermissionDenied, "NOT_OWNER", 0)}}
	client := startFake(t, fake)
	_, err := client.CurrentUser(context.Background())
	var refused *Error
	if !errors.As(err, &refused) || refused.Code != codes.PermissionDenied || refused.Reason != "NOT_OWNER" {
		t.Fatalf("got %v", err)
	}
}

func event(seq uint64, phase licensingv1.Phase, enclave *licensingv1.Enclave) *licensingv1.CreateEnclaveResponse {
	return &licensingv1.CreateEnclaveResponse{EnclaveId: "e1", Phase: phase, Sequence: seq, Message: phase.String(), Enclave: enclave}
}

func watchEvent(e *licensingv1.CreateEnclaveResponse) *licensingv1.WatchEnclaveResponse {
	return &licensingv1.WatchEnclaveResponse{EnclaveId: e.EnclaveId, Phase: e.Phase, Sequence: e.Sequence, Message: e.Message, Enclave: e.Enclave}
}

// A create stream that drops is resumed with WatchEnclave from the last sequence seen;
// a replayed event is dropped, and the events end with Created.
func TestDroppedCreateStreamResumesFromTheLastSequence(t *testing.T) {
	backoffFirst = time.Millisecond
	enclave := &licensingv1.Enclave{Id: "e1", Phase: licensingv1.Phase_PHASE_ATTESTED}
	var from []uint64
	fake := &fakeLicensing{
		create: func(_ *licensingv1.CreateEnclaveRequest, s licensingv1.EnclaveService_CreateEnclaveServer) error {
			_ = s.Send(event(1, licensingv1.Phase_PHASE_ACCEPTED, nil))
			_ = s.Send(event(2, licensingv1.Phase_PHASE_SCHEDULED, nil))
			return status.Error(codes.Unavailable, "backend restarting")
		},
		watch: func(req *licensingv1.WatchEnclaveRequest, s licensingv1.EnclaveService_WatchEnclaveServer) error {
			from = append(from, req.GetFromSequence())
			_ = s.Send(watchEvent(event(2, licensingv1.Phase_PHASE_SCHEDULED, nil))) // a replay
			_ = s.Send(watchEvent(event(3, licensingv1.Phase_PHASE_READY, enclave)))
			return s.Send(watchEvent(event(4, licensingv1.Phase_PHASE_ATTESTED, enclave)))
		},
	}
	client := startFake(t, fake)
	var seen []string
	for ev, err := range client.CreateEnclave(context.Background(), CreateOptions{SkipVerify: true}) {
		if err != nil {
			t.Fatal(err)
		}
		switch e := ev.(type) {
		case *Progress:
			seen = append(seen, e.Phase.String())
		case *Reconnecting:
			seen = append(seen, "reconnecting")
		case *Created:
			seen = append(seen, "created "+e.Enclave.GetId())
		}
	}
	want := []string{"PHASE_ACCEPTED", "PHASE_SCHEDULED", "reconnecting", "PHASE_READY", "PHASE_ATTESTED", "created e1"}
	if len(seen) != len(want) {
		t.Fatalf("events %v, want %v", seen, want)
	}
	for i := range want {
		if seen[i] != want[i] {
			t.Fatalf("events %v, want %v", seen, want)
		}
	}
	if len(from) != 1 || from[0] != 2 {
		t.Fatalf("watched from %v, want [2]", from)
	}
}

// A create that ends FAILED is an *EnclaveFailedError with the server's reason.
func TestFailedProvisioningIsAnError(t *testing.T) {
	fake := &fakeLicensing{
		create: func(_ *licensingv1.CreateEnclaveRequest, s licensingv1.EnclaveService_CreateEnclaveServer) error {
			_ = s.Send(event(1, licensingv1.Phase_PHASE_ACCEPTED, nil))
			return s.Send(event(2, licensingv1.Phase_PHASE_FAILED, &licensingv1.Enclave{Id: "e1", FailureReason: "no capacity."}))
		},
	}
	client := startFake(t, fake)
	var last error
	for _, err := range client.CreateEnclave(context.Background(), CreateOptions{}) {
		last = err
	}
	var failed *EnclaveFailedError
	if !errors.As(last, &failed) || failed.Reason != "no capacity" || failed.Phase != licensingv1.Phase_PHASE_FAILED {
		t.Fatalf("got %v", last)
	}
}
