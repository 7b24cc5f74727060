// Command story does the whole user story against a live licensing server: sign up, log
// in, create an enclave printing its streamed progress, verify its attestation, then
// PutSecret / GetSecret / Sign on the enclave over mutual TLS pinned to the attested
// certificate, checking the signature.
//
//	go run ./examples/story -enroll 127.0.0.1:8443 -api 127.0.0.1:9443 -ca .licensing/ca.pem
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"licensing.internal/clients/go/attestation"
	"licensing.internal/clients/go/licensing"
)

// Config is where the server is and who to be.
type Config struct {
	EnrollAddr, APIAddr string
	CAPEM               []byte
	Username, Password  string
}

// Run is the story; it writes what happens to out.
func Run(ctx context.Context, cfg Config, out io.Writer) error {
	client, err := licensing.New(licensing.Config{EnrollAddr: cfg.EnrollAddr, APIAddr: cfg.APIAddr, CAPEM: cfg.CAPEM})
	if err != nil {
		return err
	}
	defer client.Close()

	account, err := client.SignUp(ctx, cfg.Username, cfg.Password)
	if err != nil {
		return fmt.Errorf("sign up: %w", err)
	}
	fmt.Fprintf(out, "signed up %s (%s)\n", account.Username, account.UserID)
	if _, err := client.LogIn(ctx, cfg.Username, cfg.Password); err != nil {
		return fmt.Errorf("log in: %w", err)
	}
	user, err := client.CurrentUser(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "logged in as %s over mutual TLS with a certificate for a key made here\n", user.GetUsername())

	var created *licensing.Created
	for event, err := range client.CreateEnclave(ctx, licensing.CreateOptions{}) {
		if err != nil {
			var failed *attestation.AttestationError
			if errors.As(err, &failed) {
				return fmt.Errorf("do not trust this enclave: check %s failed: %w", failed.Check, err)
			}
			return fmt.Errorf("create enclave: %w", err)
		}
		switch e := event.(type) {
		case *licensing.Progress:
			fmt.Fprintf(out, "  [%d] %-24s %s\n", e.Sequence, e.Phase, e.Message)
		case *licensing.Reconnecting:
			fmt.Fprintf(out, "  stream dropped (%v); reconnecting in %s\n", e.Err, e.Delay.Round(time.Millisecond))
		case *licensing.FetchingAttestation:
			fmt.Fprintf(out, "  %s: fetching a fresh attestation\n", e.Why)
		case *licensing.Created:
			created = e
		}
	}
	enclave := created.Enclave
	fmt.Fprintf(out, "enclave %s at %s; attestation from the %s verified:\n", enclave.GetId(), enclave.GetEndpoint(), created.Source)
	for _, check := range created.Attestation.Report.Checks {
		fmt.Fprintf(out, "  ok %-21s %s\n", check.Check, check.Detail)
	}
	defer func() { _ = client.DeleteEnclave(context.WithoutCancel(ctx), enclave.GetId()) }()

	// A fresh attestation over a new nonce, then a connection pinned to that certificate.
	session, err := client.OpenEnclave(ctx, enclave.GetId())
	if err != nil {
		return fmt.Errorf("open enclave: %w", err)
	}
	defer session.Close()
	identity, err := session.GetIdentity(ctx)
	if err != nil {
		return err
	}
	if !identity.MatchesPinnedCertificate {
		return errors.New("the enclave reports another certificate than the attested one")
	}
	fmt.Fprintf(out, "connected, pinned to certificate %s\n", hex.EncodeToString(identity.CertificateSHA256))

	secret := make([]byte, 24)
	_, _ = rand.Read(secret)
	if err := session.PutSecret(ctx, "api-key", secret); err != nil {
		return fmt.Errorf("put secret: %w", err)
	}
	back, err := session.GetSecret(ctx, "api-key")
	if err != nil {
		return fmt.Errorf("get secret: %w", err)
	}
	if !bytes.Equal(back, secret) {
		return errors.New("the secret read back differs")
	}
	fmt.Fprintf(out, "stored and read back secret api-key (%d bytes)\n", len(secret))

	data := []byte("licence for " + user.GetUsername())
	signature, err := session.Sign(ctx, data) // verified against the pinned certificate
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	if !licensing.VerifySignature(enclave.GetCertificatePem(), data, signature.Signature) {
		return errors.New("the signature does not verify")
	}
	fmt.Fprintf(out, "signature %s… verifies against the attested certificate\n", hex.EncodeToString(signature.Signature[:8]))
	return nil
}

func main() {
	enroll := flag.String("enroll", "127.0.0.1:8443", "enrollment listener (TLS)")
	api := flag.String("api", "127.0.0.1:9443", "API listener (mutual TLS)")
	caFile := flag.String("ca", ".licensing/ca.pem", "licensing CA bundle (PEM)")
	username := flag.String("user", "", "username to sign up (random if empty)")
	password := flag.String("password", "correct horse battery", "password")
	flag.Parse()
	caPEM, err := os.ReadFile(*caFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	name := *username
	if name == "" {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		name = "gopher-" + hex.EncodeToString(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := Run(ctx, Config{EnrollAddr: *enroll, APIAddr: *api, CAPEM: caPEM, Username: name, Password: *password}, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "story:", err)
		os.Exit(1)
	}
}
