package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// The agent's local attach API (docs/localapi.md): HTTP/1.1 and JSON on a unix socket.

type owner struct {
	Kind string `json:"kind"`
	ID   string `json:"id"`
}

type netnsTarget struct {
	Path      string `json:"path"`
	Interface string `json:"interface"`
}

type target struct {
	Netns netnsTarget `json:"netns"`
}

type podRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

type attachRequest struct {
	Network              string            `json:"network"`
	Owner                owner             `json:"owner"`
	Target               target            `json:"target"`
	Namespace            string            `json:"namespace,omitempty"`
	IP                   string            `json:"ip,omitempty"`
	Mac                  string            `json:"mac,omitempty"`
	Labels               map[string]string `json:"labels,omitempty"`
	Timeout              float64           `json:"timeout"`
	Pod                  *podRef           `json:"pod,omitempty"`
	PodNetworkAnnotation bool              `json:"podNetworkAnnotation,omitempty"`
}

type refRequest struct {
	Network   string  `json:"network"`
	Owner     owner   `json:"owner"`
	Interface string  `json:"interface"`
	Namespace string  `json:"namespace,omitempty"`
	Timeout   float64 `json:"timeout"`
}

type gcKeep struct {
	ID        string `json:"id"`
	Interface string `json:"interface"`
}

type gcRequest struct {
	Network   string   `json:"network"`
	OwnerKind string   `json:"ownerKind"`
	Keep      []gcKeep `json:"keep"`
}

// realized is the agent's answer to attach and check.
type realized struct {
	Endpoint struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"endpoint"`
	Network       string  `json:"network"`
	IP            string  `json:"ip"`
	PrefixLength  int     `json:"prefixLength"`
	Gateway       *string `json:"gateway"`
	Mac           string  `json:"mac"`
	MTU           int     `json:"mtu"`
	Interface     string  `json:"interface"`
	HostInterface string  `json:"hostInterface"`
	Netns         *string `json:"netns"`
}

type statusReply struct {
	Node     string `json:"node"`
	Synced   bool   `json:"synced"`
	Ready    bool   `json:"ready"`
	Datapath struct {
		Healthy bool   `json:"healthy"`
		Reason  string `json:"reason"`
		Message string `json:"message"`
	} `json:"datapath"`
}

// agentError is the agent's error object.
type agentError struct {
	Reason    string `json:"reason"`
	Message   string `json:"message"`
	Temporary bool   `json:"temporary"`
	Field     string `json:"field,omitempty"`
	Status    int    `json:"-"`
}

func (e *agentError) Error() string { return e.Reason + ": " + e.Message }

// unreachableError: the agent could not be asked or did not answer (no socket, refused, reset,
// the deadline passed, an answer that is not the protocol's).
type unreachableError struct {
	socket string
	err    error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("the Voile agent at %s did not answer: %v", e.socket, e.err)
}

func (e *unreachableError) Unwrap() error { return e.err }

type agentClient struct {
	socket string
	http   *http.Client
}

func newAgentClient(socket string, timeout time.Duration) *agentClient {
	transport := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}
	return &agentClient{socket: socket, http: &http.Client{Transport: transport, Timeout: timeout}}
}

// call sends one request; out receives a 200 answer. Errors are *agentError (the agent said
// no) or *unreachableError.
func (c *agentClient) call(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		raw, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, "http://voile-agent"+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return &unreachableError{socket: c.socket, err: err}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return &unreachableError{socket: c.socket, err: err}
	}
	if resp.StatusCode != http.StatusOK {
		var wrapped struct {
			Error *agentError `json:"error"`
		}
		if json.Unmarshal(raw, &wrapped) != nil || wrapped.Error == nil {
			return &unreachableError{socket: c.socket,
				err: fmt.Errorf("HTTP %d without an error object", resp.StatusCode)}
		}
		wrapped.Error.Status = resp.StatusCode
		return wrapped.Error
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return &unreachableError{socket: c.socket, err: fmt.Errorf("bad answer: %w", err)}
		}
	}
	return nil
}

func (c *agentClient) attach(req attachRequest) (*realized, error) {
	var out realized
	if err := c.call(http.MethodPost, "/v1/attach", req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

func (c *agentClient) detach(req refRequest) (bool, error) {
	var out struct {
		Deleted bool `json:"deleted"`
	}
	err := c.call(http.MethodPost, "/v1/detach", req, &out)
	return out.Deleted, err
}

func (c *agentClient) check(req refRequest) (*realized, error) {
	var out realized
	if err := c.call(http.MethodPost, "/v1/check", req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

func (c *agentClient) gc(req gcRequest) ([]string, error) {
	var out struct {
		Removed []string `json:"removed"`
	}
	err := c.call(http.MethodPost, "/v1/gc", req, &out)
	return out.Removed, err
}

func (c *agentClient) status() (*statusReply, error) {
	var out statusReply
	if err := c.call(http.MethodGet, "/v1/status", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// temporary: the same request may succeed later (the agent said so, or it did not answer).
func temporary(err error) bool {
	var ae *agentError
	if errors.As(err, &ae) {
		return ae.Temporary
	}
	var ue *unreachableError
	return errors.As(err, &ue)
}
