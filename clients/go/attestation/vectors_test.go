package attestation_test

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"licensing.internal/clients/go/attestation"
	licensingv1 "licensing.internal/clients/go/gen/licensing/v1"
)

// vectorsFile is shared with the Python client's tests (made from swtpm quotes).
const vectorsFile = "../../testdata/attestation-vectors.json"

type vectorFile struct {
	Format       int      `json:"format"`
	VerifyAt     string   `json:"verify_at"`
	TrustedCAPEM []string `json:"trusted_ca_pem"`
	Vectors      []struct {
		Name                   string          `json:"name"`
		Description            string          `json:"description"`
		Attestation            json.RawMessage `json:"attestation"`
		Nonce                  string          `json:"nonce"`
		ExpectedCertificatePEM string          `json:"expected_certificate_pem"`
		Expected               struct {
			Valid       bool   `json:"valid"`
			FailedCheck string `json:"failed_check"`
		} `json:"expected"`
	} `json:"vectors"`
}

// Vector is one decoded test vector.
type Vector struct {
	Name        string
	Attestation *licensingv1.Attestation
	Options     attestation.Options
	Valid       bool
	FailedCheck string
}

// loadVectors reads LICENSING_ATTESTATION_VECTORS, else the shared file; skips if neither exists.
func loadVectors(tb testing.TB) []Vector {
	tb.Helper()
	path := os.Getenv("LICENSING_ATTESTATION_VECTORS")
	if path == "" {
		path = filepath.FromSlash(vectorsFile)
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		tb.Skipf("no attestation vectors at %s", path)
	}
	if err != nil {
		tb.Fatal(err)
	}
	var file vectorFile
	if err := json.Unmarshal(data, &file); err != nil {
		tb.Fatal(err)
	}
	if file.Format != 1 {
		tb.Fatalf("vectors format %d, this test reads format 1", file.Format)
	}
	at, err := time.Parse(time.RFC3339, file.VerifyAt)
	if err != nil {
		tb.Fatalf("verify_at: %v", err)
	}
	if len(file.Vectors) == 0 {
		tb.Fatal("no vectors")
	}
	var out []Vector
	for _, v := range file.Vectors {
		msg := &licensingv1.Attestation{}
		if err := protojson.Unmarshal(v.Attestation, msg); err != nil {
			tb.Fatalf("vector %s: attestation: %v", v.Name, err)
		}
		nonce, err := base64.StdEncoding.DecodeString(v.Nonce)
		if err != nil {
			tb.Fatalf("vector %s: nonce: %v", v.Name, err)
		}
		out = append(out, Vector{
			Name:        v.Name,
			Attestation: msg,
			Options: attestation.Options{
				Nonce:                  nonce,
				ExpectedCertificatePEM: v.ExpectedCertificatePEM,
				TrustedCAPEM:           file.TrustedCAPEM,
				Now:                    at,
			},
			Valid:       v.Expected.Valid,
			FailedCheck: v.Expected.FailedCheck,
		})
	}
	return out
}

// Every shared vector gets the Python verifier's verdict, naming the same failed check.
func TestSharedVectors(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			report, err := attestation.Verify(v.Attestation, v.Options)
			if v.Valid {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				if len(report.Checks) != len(attestation.Checks) {
					t.Fatalf("passed %d checks, want all %d", len(report.Checks), len(attestation.Checks))
				}
				for i, c := range report.Checks {
					if c.Check != attestation.Checks[i] {
						t.Fatalf("check %d is %s, want %s", i, c.Check, attestation.Checks[i])
					}
				}
				return
			}
			var failed *attestation.AttestationError
			if !errors.As(err, &failed) {
				t.Fatalf("want failed check %q, got %v", v.FailedCheck, err)
			}
			if string(failed.Check) != v.FailedCheck {
				t.Fatalf("failed check %q (%s), want %q", failed.Check, failed.Detail, v.FailedCheck)
			}
		})
	}
}

// BenchmarkVerify verifies the good vectors; b.N verifications on one goroutine (one core).
func BenchmarkVerify(b *testing.B) {
	var good []Vector
	for _, v := range loadVectors(b) {
		if v.Valid {
			good = append(good, v)
		}
	}
	if len(good) == 0 {
		b.Skip("no valid vector")
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		v := good[i%len(good)]
		if _, err := attestation.Verify(v.Attestation, v.Options); err != nil {
			b.Fatal(err)
		}
	}
}
