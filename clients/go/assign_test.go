package sluice

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

type vectors struct {
	Buckets []struct {
		Salt       string `json:"salt"`
		UnitID     string `json:"unit_id"`
		NumBuckets int    `json:"num_buckets"`
		Bucket     int    `json:"bucket"`
	} `json:"buckets"`
	Traffic []struct {
		Salt            string  `json:"salt"`
		UnitID          string  `json:"unit_id"`
		NumBuckets      int     `json:"num_buckets"`
		TrafficFraction float64 `json:"traffic_fraction"`
		Threshold       int     `json:"traffic_threshold"`
		TrafficBucket   int     `json:"traffic_bucket"`
		InExperiment    bool    `json:"in_experiment"`
	} `json:"traffic"`
	Layers []struct {
		Name        string `json:"layer_name"`
		NumBuckets  int    `json:"layer_num_buckets"`
		UnitID      string `json:"unit_id"`
		LayerBucket int    `json:"layer_bucket"`
	} `json:"layers"`
	Assignments []struct {
		Name       string `json:"name"`
		Salt       string `json:"salt"`
		NumBuckets int    `json:"num_buckets"`
		Arms       []struct {
			Arm    string   `json:"arm"`
			Ranges [][2]int `json:"ranges"`
		} `json:"arms"`
		DefaultArm      string  `json:"default_arm"`
		TrafficFraction float64 `json:"traffic_fraction"`
		Layer           *struct {
			Name       string `json:"name"`
			Start      int    `json:"start"`
			End        int    `json:"end"`
			NumBuckets int    `json:"num_buckets"`
		} `json:"layer"`
		Cases []struct {
			UnitID       string  `json:"unit_id"`
			Bucket       int     `json:"bucket"`
			Arm          string  `json:"arm"`
			InExperiment bool    `json:"in_experiment"`
			Propensity   float64 `json:"propensity"`
		} `json:"cases"`
	} `json:"assignments"`
}

func load(t *testing.T) vectors {
	path := filepath.Join("..", "..", "sluice", "core", "data", "bucket_vectors.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading the shared vectors: %v", err)
	}
	var v vectors
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("parsing %s: %v", path, err)
	}
	if len(v.Buckets) == 0 || len(v.Assignments) == 0 {
		t.Fatalf("%s holds no vectors", path)
	}
	return v
}

func TestBucketsMatchTheSharedVectors(t *testing.T) {
	for _, c := range load(t).Buckets {
		if got := Bucket(c.Salt, c.UnitID, c.NumBuckets); got != c.Bucket {
			t.Errorf("Bucket(%q, %q, %d) = %d, want %d", c.Salt, c.UnitID, c.NumBuckets, got, c.Bucket)
		}
	}
}

func TestTrafficAndLayersMatchTheSharedVectors(t *testing.T) {
	v := load(t)
	for _, c := range v.Traffic {
		th := TrafficThreshold(c.TrafficFraction, c.NumBuckets)
		tb := Bucket(c.Salt+"/traffic", c.UnitID, c.NumBuckets)
		if th != c.Threshold || tb != c.TrafficBucket || (tb < th) != c.InExperiment {
			t.Errorf("traffic %q/%q: threshold %d bucket %d, want %d %d (in %v)", c.Salt, c.UnitID, th, tb,
				c.Threshold, c.TrafficBucket, c.InExperiment)
		}
	}
	for _, c := range v.Layers {
		if got := Bucket("layer/"+c.Name, c.UnitID, c.NumBuckets); got != c.LayerBucket {
			t.Errorf("layer %q unit %q: bucket %d, want %d", c.Name, c.UnitID, got, c.LayerBucket)
		}
	}
}

func TestAssignmentsMatchTheSharedVectors(t *testing.T) {
	for _, a := range load(t).Assignments {
		table := Table{Salt: a.Salt, NumBuckets: a.NumBuckets, DefaultArm: a.DefaultArm, TrafficFraction: a.TrafficFraction}
		for _, arm := range a.Arms {
			ranges := make([]Range, len(arm.Ranges))
			for i, r := range arm.Ranges {
				ranges[i] = Range{r[0], r[1]}
			}
			table.Arms = append(table.Arms, Arm{Name: arm.Arm, Ranges: ranges})
		}
		if a.Layer != nil {
			table.Layer = &Layer{Name: a.Layer.Name, Start: a.Layer.Start, End: a.Layer.End, NumBuckets: a.Layer.NumBuckets}
		}
		for _, c := range a.Cases {
			got, err := table.Assign(c.UnitID)
			if err != nil {
				t.Fatalf("%s: %v", a.Name, err)
			}
			want := Assignment{Arm: c.Arm, Bucket: c.Bucket, InExperiment: c.InExperiment, Propensity: c.Propensity}
			if got != want {
				t.Errorf("%s unit %q: got %+v, want %+v", a.Name, c.UnitID, got, want)
			}
		}
	}
}
