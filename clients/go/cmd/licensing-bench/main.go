// Command licensing-bench measures the Go client against a live server (bench/go_client_bench.py
// starts one and runs this): time to the first progress event of CreateEnclave, the
// create-to-verified latency (p50/p95), and verifications per second on one core over
// the shared attestation vectors. It prints figures and asserts nothing.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"licensing.internal/clients/go/attestation"
	licensingv1 "licensing.internal/clients/go/gen/licensing/v1"
	"licensing.internal/clients/go/licensing"
)

// perUser stays under the server's live-enclave limit per user.
const perUser = 3

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted)-1) + 0.5)
	return sorted[i]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func creates(ctx context.Context, cfg licensing.Config, n int) (first, verified []time.Duration, err error) {
	var client *licensing.Client
	for i := 0; i < n; i++ {
		if i%perUser == 0 {
			if client != nil {
				client.Close()
			}
			if client, err = licensing.New(cfg); err != nil {
				return nil, nil, err
			}
			b := make([]byte, 4)
			_, _ = rand.Read(b)
			name := "bench-" + hex.EncodeToString(b)
			if _, err = client.SignUp(ctx, name, "correct horse battery"); err != nil {
				return nil, nil, err
			}
			if _, err = client.LogIn(ctx, name, "correct horse battery"); err != nil {
				return nil, nil, err
			}
		}
		start := time.Now()
		var firstAt time.Duration
		var created *licensing.Created
		for event, err := range client.CreateEnclave(ctx, licensing.CreateOptions{}) {
			if err != nil {
				return nil, nil, err
			}
			if _, ok := event.(*licensing.Progress); ok && firstAt == 0 {
				firstAt = time.Since(start)
			}
			if c, ok := event.(*licensing.Created); ok {
				created = c
			}
		}
		verified = append(verified, time.Since(start))
		first = append(first, firstAt)
		if err := client.DeleteEnclave(ctx, created.Enclave.GetId()); err != nil {
			return nil, nil, err
		}
	}
	client.Close()
	return first, verified, nil
}

type vectorFile struct {
	VerifyAt     string   `json:"verify_at"`
	TrustedCAPEM []string `json:"trusted_ca_pem"`
	Vectors      []struct {
		Attestation            json.RawMessage `json:"attestation"`
		Nonce                  string          `json:"nonce"`
		ExpectedCertificatePEM string          `json:"expected_certificate_pem"`
		Expected               struct {
			Valid bool `json:"valid"`
		} `json:"expected"`
	} `json:"vectors"`
}

type goodVector struct {
	attestation *licensingv1.Attestation
	options     attestation.Options
}

func loadGood(path string) ([]goodVector, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var file vectorFile
	if err := json.Unmarshal(data, &file); err != nil {
		return nil, err
	}
	at, err := time.Parse(time.RFC3339, file.VerifyAt)
	if err != nil {
		return nil, err
	}
	var good []goodVector
	for _, v := range file.Vectors {
		if !v.Expected.Valid {
			continue
		}
		msg := &licensingv1.Attestation{}
		if err := protojson.Unmarshal(v.Attestation, msg); err != nil {
			return nil, err
		}
		nonce, err := base64.StdEncoding.DecodeString(v.Nonce)
		if err != nil {
			return nil, err
		}
		good = append(good, goodVector{msg, attestation.Options{Nonce: nonce, ExpectedCertificatePEM: v.ExpectedCertificatePEM, TrustedCAPEM: file.TrustedCAPEM, Now: at}})
	}
	return good, nil
}

// verifyRate is verifications per second on one goroutine (one core), back to back.
func verifyRate(good []goodVector, seconds float64) (float64, int, error) {
	deadline := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	start, count := time.Now(), 0
	for time.Now().Before(deadline) {
		for i := 0; i < 50; i++ {
			v := good[count%len(good)]
			if _, err := attestation.Verify(v.attestation, v.options); err != nil {
				return 0, 0, err
			}
			count++
		}
	}
	return float64(count) / time.Since(start).Seconds(), count, nil
}

func main() {
	enroll := flag.String("enroll", "", "enrollment listener")
	api := flag.String("api", "", "API listener")
	caFile := flag.String("ca", "", "licensing CA bundle (PEM)")
	n := flag.Int("creates", 10, "enclaves to create, one after the other")
	vectors := flag.String("vectors", "../testdata/attestation-vectors.json", "shared attestation vectors")
	seconds := flag.Float64("verify-seconds", 3, "how long to verify back to back")
	flag.Parse()

	good, err := loadGood(*vectors)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vectors:", err)
		os.Exit(1)
	}
	rate, count, err := verifyRate(good, *seconds)
	if err != nil {
		fmt.Fprintln(os.Stderr, "verify:", err)
		os.Exit(1)
	}
	fmt.Printf("verify: %d verifications of %d good vectors in %.1f s on one goroutine: %.0f /s per core (GOMAXPROCS %d)\n",
		count, len(good), *seconds, rate, runtime.GOMAXPROCS(0))

	summary := fmt.Sprintf("SUMMARY verify_per_core=%.0f/s", rate)
	if *enroll != "" {
		caPEM, err := os.ReadFile(*caFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		first, verified, err := creates(ctx, licensing.Config{EnrollAddr: *enroll, APIAddr: *api, CAPEM: caPEM}, *n)
		if err != nil {
			fmt.Fprintln(os.Stderr, "create:", err)
			os.Exit(1)
		}
		slices.Sort(first)
		slices.Sort(verified)
		fmt.Printf("create: %d enclaves one after the other (sign-up/login every %d, each deleted after)\n", *n, perUser)
		fmt.Printf("  first progress event: p50 %s  p95 %s  max %s\n", ms(percentile(first, .5)), ms(percentile(first, .95)), ms(first[len(first)-1]))
		fmt.Printf("  create to verified:   p50 %s  p95 %s  max %s\n", ms(percentile(verified, .5)), ms(percentile(verified, .95)), ms(verified[len(verified)-1]))
		summary += fmt.Sprintf(" first_event_p50=%s create_to_verified_p50=%s p95=%s",
			ms(percentile(first, .5)), ms(percentile(verified, .5)), ms(percentile(verified, .95)))
	}
	fmt.Println(summary)
}
