// Command voile is Voile's CNI plugin: it forwards every verb to the node agent's local attach
// API (docs/localapi.md) and turns the answer into the CNI result or error object. All logic
// stays in the agent; this binary is static, so hosts need no Python (docs/cni.md).
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

const (
	ownerKind = "cni"
	// Beyond the request's own deadline, the agent may need this long to undo a failed ADD.
	rollbackSlack = 20 * time.Second
	shortCall     = 10 * time.Second
)

var pluginVersion = "dev" // set with -ldflags by hack/cni/build.sh

var supported = version.PluginSupports("0.4.0", "1.0.0", "1.1.0")

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func cmdAdd(args *skel.CmdArgs) error {
	conf, e := loadConf(args.StdinData)
	if e != nil {
		return e
	}
	pod, e := parseArgs(args.Args)
	if e != nil {
		return e
	}
	ip, mac, e := conf.static(pod)
	if e != nil {
		return e
	}
	req := attachRequest{
		Network:   conf.Network,
		Owner:     owner{Kind: ownerKind, ID: args.ContainerID},
		Target:    target{Netns: netnsTarget{Path: args.Netns, Interface: args.IfName}},
		Namespace: conf.namespace(pod),
		IP:        ip,
		Mac:       mac,
		Labels:    pod.labels(),
		Timeout:   conf.Timeout,
		Pod:       pod.pod(),
		// Only the agent reads the Pod's annotation and decides (docs/cni.md).
		PodNetworkAnnotation: conf.PodNetworkAnnotation && pod.pod() != nil,
	}
	client := newAgentClient(conf.Socket, seconds(conf.Timeout)+rollbackSlack)
	done, err := client.attach(req)
	if err != nil {
		return cniError(err, "ADD")
	}
	result, err := buildResult(done, args.IfName, args.Netns, conf.PrevResult)
	if err != nil {
		return types.NewError(codeVoileInternal, "ADD: "+err.Error(), "")
	}
	return types.PrintResult(result, conf.CNIVersion)
}

func cmdDel(args *skel.CmdArgs) error {
	conf, e := loadConf(args.StdinData)
	if e != nil {
		return e
	}
	pod, e := parseArgs(args.Args)
	if e != nil {
		return e
	}
	req := refRequest{
		Network:   conf.Network,
		Owner:     owner{Kind: ownerKind, ID: args.ContainerID},
		Interface: args.IfName,
		Namespace: conf.namespace(pod),
		Timeout:   conf.Timeout,
	}
	client := newAgentClient(conf.Socket, seconds(conf.Timeout)+rollbackSlack)
	_, err := client.detach(req)
	if err == nil {
		return nil
	}
	if !temporary(err) {
		return cniError(err, "DEL")
	}
	// Best effort: the agent finishes the detach when it is back, so no address leaks.
	path, werr := writePending(conf.SpoolDir, pendingRecord{
		Network:     conf.Network,
		ContainerID: args.ContainerID,
		IfName:      args.IfName,
		Namespace:   conf.namespace(pod),
		Netns:       args.Netns,
		Reason:      err.Error(),
	})
	if werr != nil {
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("DEL: %v; and the pending record could not be written: %v", err, werr), "")
	}
	fmt.Fprintf(os.Stderr, "voile: DEL recorded in %s for the agent to finish: %v\n", path, err)
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	conf, e := loadConf(args.StdinData)
	if e != nil {
		return e
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "CHECK: prevResult is required", "")
	}
	pod, e := parseArgs(args.Args)
	if e != nil {
		return e
	}
	req := refRequest{
		Network:   conf.Network,
		Owner:     owner{Kind: ownerKind, ID: args.ContainerID},
		Interface: args.IfName,
		Namespace: conf.namespace(pod),
		Timeout:   conf.Timeout,
	}
	done, err := newAgentClient(conf.Socket, shortCall).check(req)
	if err != nil {
		return cniError(err, "CHECK")
	}
	reason, err := compareWithPrev(done, args.IfName, args.Netns, conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "CHECK: "+err.Error(), "")
	}
	if reason != "" {
		return types.NewError(codeMismatch, "CHECK: "+reason, "")
	}
	return nil
}

func cmdGC(args *skel.CmdArgs) error {
	conf, e := loadConf(args.StdinData)
	if e != nil {
		return e
	}
	keep := make([]gcKeep, 0, len(conf.ValidAttachments))
	for _, a := range conf.ValidAttachments {
		keep = append(keep, gcKeep{ID: a.ContainerID, Interface: a.IfName})
	}
	removed, err := newAgentClient(conf.Socket, seconds(maxTimeout)).gc(
		gcRequest{Network: conf.Network, OwnerKind: ownerKind, Keep: keep})
	if err != nil {
		return cniError(err, "GC")
	}
	for _, name := range removed {
		fmt.Fprintf(os.Stderr, "voile: GC removed %s\n", name)
	}
	return nil
}

func cmdStatus(args *skel.CmdArgs) error {
	conf, e := loadConf(args.StdinData)
	if e != nil {
		return e
	}
	st, err := newAgentClient(conf.Socket, shortCall).status()
	if err != nil {
		return types.NewError(codeNotAvailable, "STATUS: "+err.Error(), "")
	}
	if !st.Ready {
		why := "its datapath is down: " + st.Datapath.Reason + " " + st.Datapath.Message
		if !st.Synced {
			why = "it is not synced with the API server"
		}
		return types.NewError(codeNotAvailable,
			fmt.Sprintf("STATUS: the Voile agent of %s is not ready: %s", st.Node, why), "")
	}
	return nil
}

// guarded turns a panic into the error object: the runtime never sees a Go traceback.
func guarded(f func(*skel.CmdArgs) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) (err error) {
		defer func() {
			if p := recover(); p != nil {
				fmt.Fprintf(os.Stderr, "voile: panic: %v\n%s", p, debug.Stack())
				err = types.NewError(codeVoileInternal, fmt.Sprintf("internal error: %v", p), "")
			}
		}()
		return f(args)
	}
}

// errorObject is the spec's error result, with the configuration's cniVersion.
type errorObject struct {
	CNIVersion string `json:"cniVersion"`
	Code       uint   `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details,omitempty"`
}

// bufferStdin reads the configuration once for the error object's cniVersion and hands skel
// the same bytes. Only for the verbs that read stdin (VERSION does not: a terminal would hang).
func bufferStdin() string {
	switch os.Getenv("CNI_COMMAND") {
	case "ADD", "DEL", "CHECK", "GC", "STATUS":
	default:
		return version.Current()
	}
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		return version.Current()
	}
	r, w, err := os.Pipe()
	if err != nil {
		return version.Current()
	}
	go func() {
		_, _ = w.Write(raw)
		w.Close()
	}()
	os.Stdin = r
	var conf struct {
		CNIVersion string `json:"cniVersion"`
	}
	if json.Unmarshal(raw, &conf) != nil || conf.CNIVersion == "" {
		return version.Current()
	}
	return conf.CNIVersion
}

func main() {
	cniVersion := bufferStdin()
	e := skel.PluginMainFuncsWithError(skel.CNIFuncs{
		Add:    guarded(cmdAdd),
		Del:    guarded(cmdDel),
		Check:  guarded(cmdCheck),
		GC:     guarded(cmdGC),
		Status: guarded(cmdStatus),
	}, supported, "CNI plugin voile "+pluginVersion+" (Voile overlay networks)")
	if e == nil {
		return
	}
	raw, err := json.MarshalIndent(errorObject{
		CNIVersion: cniVersion, Code: e.Code, Msg: e.Msg, Details: e.Details,
	}, "", "    ")
	if err != nil {
		raw = []byte(fmt.Sprintf(`{"code": %d, "msg": %q}`, e.Code, e.Msg))
	}
	fmt.Fprintln(os.Stdout, string(raw))
	os.Exit(1)
}
