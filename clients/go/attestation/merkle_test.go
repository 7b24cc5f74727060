package attestation

import (
	"bytes"
	"crypto/sha256"
	"testing"
)

// tree builds the levels as licensing_common.binding.MerkleTree does (odd last node promoted).
func tree(values [][]byte) [][][]byte {
	level := make([][]byte, len(values))
	for i, v := range values {
		level[i] = merkleLeaf(v)
	}
	levels := [][][]byte{level}
	for len(level) > 1 {
		var upper [][]byte
		for i := 0; i+1 < len(level); i += 2 {
			upper = append(upper, merkleNode(level[i], level[i+1]))
		}
		if len(level)%2 == 1 {
			upper = append(upper, level[len(level)-1])
		}
		levels = append(levels, upper)
		level = upper
	}
	return levels
}

func proof(levels [][][]byte, index int) [][]byte {
	var path [][]byte
	for _, level := range levels[:len(levels)-1] {
		if index^1 < len(level) {
			path = append(path, level[index^1])
		}
		index /= 2
	}
	return path
}

// Every leaf's path leads to the root, for trees of 1 to 17 leaves; a path one sibling
// short or long, or an index out of range, is malformed.
func TestMerkleRootFromProof(t *testing.T) {
	for n := 1; n <= 17; n++ {
		values := make([][]byte, n)
		for i := range values {
			h := sha256.Sum256([]byte{byte(i)})
			values[i] = h[:]
		}
		levels := tree(values)
		root := levels[len(levels)-1][0]
		for i := 0; i < n; i++ {
			path := proof(levels, i)
			got, err := MerkleRootFromProof(values[i], uint64(i), uint64(n), path)
			if err != nil || !bytes.Equal(got, root) {
				t.Fatalf("n=%d i=%d: %x, %v", n, i, got, err)
			}
			if _, err := MerkleRootFromProof(values[i], uint64(i), uint64(n), append(path, root)); err == nil {
				t.Fatalf("n=%d i=%d: an extra sibling was accepted", n, i)
			}
			if len(path) > 0 {
				if _, err := MerkleRootFromProof(values[i], uint64(i), uint64(n), path[:len(path)-1]); err == nil {
					t.Fatalf("n=%d i=%d: a short path was accepted", n, i)
				}
			}
		}
		if _, err := MerkleRootFromProof(values[0], uint64(n), uint64(n), nil); err == nil {
			t.Fatalf("n=%d: an index out of range was accepted", n)
		}
	}
}
