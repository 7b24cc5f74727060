package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"
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
