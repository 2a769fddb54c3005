package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// pendingRecord is a DEL the agent could not take: the agent detaches it when it is back
// (voile_agent.localapi.janitor), and only then removes the file. One file per container and
// interface, so a repeated DEL rewrites the same record.
type pendingRecord struct {
	Version     int    `json:"version"`
	Network     string `json:"network"`
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
	Namespace   string `json:"namespace,omitempty"`
	Netns       string `json:"netns,omitempty"`
	Reason      string `json:"reason"`
	Time        string `json:"time"`
}

func recordName(containerID, ifname string) string {
	return fmt.Sprintf("%s-%s.json", containerID, ifname)
}

// writePending writes the record atomically (a temporary file in the same directory, synced,
// then renamed over the final name) and returns its path.
func writePending(dir string, rec pendingRecord) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	rec.Version = 1
	rec.Time = time.Now().UTC().Format(time.RFC3339)
	raw, err := json.Marshal(rec)
	if err != nil {
		return "", err
	}
	final := filepath.Join(dir, recordName(rec.ContainerID, rec.IfName))
	tmp, err := os.CreateTemp(dir, ".pending-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	if _, err := tmp.Write(append(raw, '\n')); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Chmod(tmp.Name(), 0o600); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return "", err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return final, nil
}
