package sluice

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// Client calls a Sluice sidecar (services/assignment/openapi.yaml).
type Client struct {
	BaseURL string
	HTTP    *http.Client
	// Token is sent as a bearer token; a sidecar started with SLUICE_SIDECAR_TOKEN
	// refuses rewards without it.
	Token string
}

// NewClient is a client of the sidecar at baseURL (e.g. "http://127.0.0.1:8088").
func NewClient(baseURL string) *Client {
	return &Client{BaseURL: baseURL, HTTP: &http.Client{Timeout: 2 * time.Second}}
}

// Served is the sidecar's answer to an assignment.
type Served struct {
	Experiment     string         `json:"experiment"`
	Entity         string         `json:"entity"`
	UnitID         string         `json:"unit_id"`
	Arm            string         `json:"arm"`
	Values         map[string]any `json:"values"`
	Propensity     float64        `json:"propensity"`
	InExperiment   bool           `json:"in_experiment"`
	WeightsVersion int64          `json:"weights_version"`
	Bucket         int            `json:"bucket"`
	ServeID        string         `json:"serve_id"`
	TimestampMs    int64          `json:"timestamp_ms"`
	Source         string         `json:"source"`
}

// Error is a 4xx or 5xx answer.
type Error struct {
	Status  int
	Message string `json:"error"`
}

func (e *Error) Error() string { return fmt.Sprintf("sidecar answered %d: %s", e.Status, e.Message) }

func (c *Client) post(path string, body, out any) error {
	data, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodPost, c.BaseURL+path, bytes.NewReader(data))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		e := &Error{Status: resp.StatusCode}
		_ = json.NewDecoder(resp.Body).Decode(e)
		return e
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Assign asks for the arm of unitID (entity may be empty when the experiment has none).
func (c *Client) Assign(experiment, unitID, entity string) (Served, error) {
	var s Served
	req := map[string]any{"experiment": experiment, "unit_id": unitID}
	if entity != "" {
		req["entity"] = entity
	}
	err := c.post("/v1/assign", req, &s)
	return s, err
}

// Parameter asks for the value of a parameter, whichever experiment sets it.
func (c *Client) Parameter(name, unitID, entity string) (any, Served, error) {
	var out struct {
		Value      any    `json:"value"`
		Assignment Served `json:"assignment"`
	}
	req := map[string]any{"unit_id": unitID}
	if entity != "" {
		req["entity"] = entity
	}
	err := c.post("/v1/parameters/"+name, req, &out)
	return out.Value, out.Assignment, err
}

// LogReward logs a reward of a serve.
func (c *Client) LogReward(s Served, value float64) (string, error) {
	var out struct {
		EventID string `json:"event_id"`
	}
	err := c.post("/v1/rewards", map[string]any{"serve_id": s.ServeID, "experiment": s.Experiment,
		"entity": s.Entity, "value": value}, &out)
	return out.EventID, err
}
