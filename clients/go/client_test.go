package sluice

import (
	"errors"
	"os"
	"testing"
)

// TestSidecarAPI runs against a live sidecar when SLUICE_SIDECAR_URL is set (the Python
// integration test starts one, with experiment "exp" and a table for entity "site-1").
func TestSidecarAPI(t *testing.T) {
	url := os.Getenv("SLUICE_SIDECAR_URL")
	if url == "" {
		t.Skip("SLUICE_SIDECAR_URL is not set")
	}
	c := NewClient(url)
	c.Token = os.Getenv("SLUICE_SIDECAR_TOKEN")
	s, err := c.Assign("exp", "user-7", "site-1")
	if err != nil {
		t.Fatalf("assign: %v", err)
	}
	if s.Arm == "" || s.ServeID == "" || s.WeightsVersion < 1 || s.Propensity <= 0 {
		t.Fatalf("unexpected assignment %+v", s)
	}
	if want := os.Getenv("SLUICE_EXPECT_ARM"); want != "" && s.Arm != want {
		t.Fatalf("arm %q, want %q", s.Arm, want)
	}
	if _, err := c.LogReward(s, 1); err != nil {
		t.Fatalf("reward: %v", err)
	}
	value, _, err := c.Parameter("model", "user-7", "site-1")
	if err != nil || value != "m-"+s.Arm {
		t.Fatalf("parameter: %v %v", value, err)
	}
	_, err = c.Assign("no-such-experiment", "user-7", "")
	var e *Error
	if !errors.As(err, &e) || e.Status != 404 {
		t.Fatalf("unknown experiment: got %v, want a 404", err)
	}
}
