// Package sluice assigns units to arms exactly as Sluice does, from a weight table alone,
// and calls the Sluice sidecar's HTTP API.
//
// The rule (sluice/core/assignment.py; shared test vectors in
// sluice/core/data/bucket_vectors.json): bucket = first 8 bytes of SHA-1(salt + ":" + unit),
// big-endian, modulo the number of buckets. A traffic fraction uses the salt salt + "/traffic"
// and admits units whose bucket is below floor(fraction*buckets + 0.5); a layer uses the salt
// "layer/" + name and admits units whose layer bucket is in [start, end). The arm is the one
// whose half-open ranges hold the bucket; its propensity is its bucket count over the total.
// Units outside the experiment get the default arm with propensity 1.
package sluice

import (
	"crypto/sha1"
	"encoding/binary"
	"fmt"
	"math"
)

// Bucket is the hash bucket of unitID under salt, in [0, numBuckets).
func Bucket(salt, unitID string, numBuckets int) int {
	sum := sha1.Sum([]byte(salt + ":" + unitID))
	return int(binary.BigEndian.Uint64(sum[:8]) % uint64(numBuckets))
}

// TrafficThreshold is the number of traffic buckets that enter the experiment.
func TrafficThreshold(fraction float64, numBuckets int) int {
	return int(math.Floor(fraction*float64(numBuckets) + 0.5))
}

// Range is a half-open range [Start, End) of buckets.
type Range struct{ Start, End int }

// Arm is one arm of a weight table and the buckets it owns.
type Arm struct {
	Name   string
	Ranges []Range
}

// Layer is an experiment's slice [Start, End) of a layer's buckets.
type Layer struct {
	Name       string
	Start, End int
	NumBuckets int
}

// Table is what an assigner needs: the experiment's salt and traffic settings and the arms
// of the latest weight table.
type Table struct {
	Salt            string
	NumBuckets      int
	Arms            []Arm
	DefaultArm      string
	TrafficFraction float64
	Layer           *Layer
}

// Assignment is where one unit goes.
type Assignment struct {
	Arm          string
	Bucket       int
	InExperiment bool
	Propensity   float64
}

// Assign gives the arm of unitID under t.
func (t Table) Assign(unitID string) (Assignment, error) {
	bucket := Bucket(t.Salt, unitID, t.NumBuckets)
	outside := Assignment{Arm: t.DefaultArm, Bucket: bucket, InExperiment: false, Propensity: 1}
	if t.TrafficFraction < 1 {
		if Bucket(t.Salt+"/traffic", unitID, t.NumBuckets) >= TrafficThreshold(t.TrafficFraction, t.NumBuckets) {
			return outside, nil
		}
	}
	if t.Layer != nil {
		lb := Bucket("layer/"+t.Layer.Name, unitID, t.Layer.NumBuckets)
		if lb < t.Layer.Start || lb >= t.Layer.End {
			return outside, nil
		}
	}
	for _, arm := range t.Arms {
		owned := 0
		hit := false
		for _, r := range arm.Ranges {
			owned += r.End - r.Start
			if r.Start <= bucket && bucket < r.End {
				hit = true
			}
		}
		if hit {
			return Assignment{Arm: arm.Name, Bucket: bucket, InExperiment: true,
				Propensity: float64(owned) / float64(t.NumBuckets)}, nil
		}
	}
	return Assignment{}, fmt.Errorf("bucket %d of unit %q is in no arm's ranges", bucket, unitID)
}
