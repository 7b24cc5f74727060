package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	licensingv1 "licensing.internal/clients/go/gen/licensing/v1"
	"licensing.internal/clients/go/licensing"
)

// liveServer is the stack tests/clients/test_go_client.py started; the test skips
// only when these variables are absent (a plain `go test ./...`).
func liveServer(t *testing.T) (enroll, api string, caPEM []byte) {
	t.Helper()
	enroll, api, caFile := os.Getenv("LICENSING_GO_TEST_ENROLL_ADDR"), os.Getenv("LICENSING_GO_TEST_API_ADDR"), os.Getenv("LICENSING_GO_TEST_CA_FILE")
	if enroll == "" || api == "" || caFile == "" {
		t.Skip("no live server: set LICENSING_GO_TEST_ENROLL_ADDR, LICENSING_GO_TEST_API_ADDR, LICENSING_GO_TEST_CA_FILE")
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	return enroll, api, caPEM
}

// The whole story against a live server: every step prints, and the signature verifies.
func TestStory(t *testing.T) {
	enroll, api, caPEM := liveServer(t)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := Run(ctx, Config{EnrollAddr: enroll, APIAddr: api, CAPEM: caPEM, Username: "gopher-" + hex.EncodeToString(b), Password: "correct horse battery"}, &out)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"PHASE_ACCEPTED", "PHASE_ATTESTED", "ok measurement_proof", "stored and read back", "verifies against the attested certificate"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the story did not print %q", want)
		}
	}
}

// On a live server, a connection pinned to one enclave's attested certificate refuses
// another enclave of the same user and CA (the handshake fails), and accepts its own.
func TestPinnedToTheAttestedEnclaveOnly(t *testing.T) {
	enroll, api, caPEM := liveServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	client, err := licensing.New(licensing.Config{EnrollAddr: enroll, APIAddr: api, CAPEM: caPEM})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "pin-" + hex.EncodeToString(b)
	if _, err := client.SignUp(ctx, name, "correct horse battery"); err != nil {
		t.Fatal(err)
	}
	if _, err := client.LogIn(ctx, name, "correct horse battery"); err != nil {
		t.Fatal(err)
	}
	var attested []*licensing.EnclaveAttestation
	for range 2 {
		for event, err := range client.CreateEnclave(ctx, licensing.CreateOptions{}) {
			if err != nil {
				t.Fatal(err)
			}
			if created, ok := event.(*licensing.Created); ok {
				attested = append(attested, created.Attestation)
				defer func() { _ = client.DeleteEnclave(context.WithoutCancel(ctx), created.Enclave.GetId()) }()
			}
		}
	}
	first, second := attested[0], attested[1]

	// The first enclave's attestation, pointed at the second enclave's endpoint.
	redirected := *first
	enclave := proto.Clone(first.Enclave).(*licensingv1.Enclave)
	enclave.Endpoint = second.Enclave.GetEndpoint()
	redirected.Enclave = enclave
	session, err := client.ConnectAttested(&redirected)
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	_, err = session.GetIdentity(ctx)
	var refused *licensing.Error
	if !errors.As(err, &refused) || refused.Code != codes.Unavailable || !strings.Contains(err.Error(), "not the attested") {
		t.Fatalf("want the handshake refused for presenting another certificate, got %v", err)
	}

	own, err := client.ConnectAttested(first)
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	identity, err := own.GetIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if identity.EnclaveID != first.Enclave.GetId() || !identity.MatchesPinnedCertificate {
		t.Fatalf("identity %+v", identity)
	}
}

// On a live server that re-attests every few seconds (LICENSING_GO_TEST_REATTEST=1, set
// by tests/clients/test_go_reattest.py), FollowAttestations yields verified rounds, one
// over our own nonce, and ends with the revocation once the enclave is deleted.
func TestFollowAttestations(t *testing.T) {
	enroll, api, caPEM := liveServer(t)
	if os.Getenv("LICENSING_GO_TEST_REATTEST") == "" {
		t.Skip("the live server does not re-attest quickly: set LICENSING_GO_TEST_REATTEST=1")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	client, err := licensing.New(licensing.Config{EnrollAddr: enroll, APIAddr: api, CAPEM: caPEM})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "rounds-" + hex.EncodeToString(b)
	if _, err := client.SignUp(ctx, name, "correct horse battery"); err != nil {
		t.Fatal(err)
	}
	if _, err := client.LogIn(ctx, name, "correct horse battery"); err != nil {
		t.Fatal(err)
	}
	var enclave *licensingv1.Enclave
	var sequence uint64
	for event, err := range client.CreateEnclave(ctx, licensing.CreateOptions{}) {
		if err != nil {
			t.Fatal(err)
		}
		switch e := event.(type) {
		case *licensing.Progress:
			sequence = e.Sequence
		case *licensing.Created:
			enclave = e.Enclave
		}
	}
	mine := make([]byte, 32)
	_, _ = rand.Read(mine)
	rounds, requested := 0, false
	for event, err := range client.FollowAttestations(ctx, enclave.GetId(), mine, sequence) {
		if err != nil {
			var failed *licensing.EnclaveFailedError
			if rounds >= 2 && errors.As(err, &failed) {
				t.Logf("ended: %v", err)
				break
			}
			t.Fatal(err)
		}
		if r, ok := event.(*licensing.Reattested); ok {
			rounds++
			requested = requested || r.Requested
			t.Logf("round %d verified (requested=%v, log epoch %d)", r.Round, r.Requested, r.Attestation.Attestation.GetLogEpoch())
			if rounds == 2 {
				if err := client.DeleteEnclave(ctx, enclave.GetId()); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if rounds < 2 || !requested {
		t.Fatalf("%d verified rounds, our nonce quoted: %v", rounds, requested)
	}
}
