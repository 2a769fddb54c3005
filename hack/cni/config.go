package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

const (
	defaultSocket   = "/run/voile/agent.sock"
	defaultSpoolDir = "/var/lib/voile/cni-pending"
	defaultTimeout  = 30.0
	maxTimeout      = 300.0

	labelPodNamespace = "voile.dev/pod-namespace"
	labelPodName      = "voile.dev/pod-name"
)

var (
	dnsLabel   = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	labelValue = regexp.MustCompile(`^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$`)
)

// NetConf is the plugin's configuration (one entry of a conflist), docs/cni.md.
type NetConf struct {
	types.PluginConf
	// Network is the OverlayNetwork the interface joins (required).
	Network string `json:"network"`
	// Socket is the node agent's local attach API.
	Socket string `json:"socket,omitempty"`
	// Namespace holds the Endpoints of attachments that are not pods ("" = the agent's default).
	Namespace string `json:"namespace,omitempty"`
	// SpoolDir receives a DEL the agent could not take, for the agent to finish.
	SpoolDir string `json:"spoolDir,omitempty"`
	// Timeout is how long ADD and DEL wait for the agent, in seconds.
	Timeout float64 `json:"timeout,omitempty"`
	// PodNetworkAnnotation makes Network a default: the agent reads the Pod's annotation
	// voile.dev/network, which may name another network (the plugin only says so).
	PodNetworkAnnotation bool          `json:"podNetworkAnnotation,omitempty"`
	RuntimeConfig        RuntimeConfig `json:"runtimeConfig,omitempty"`
}

// RuntimeConfig carries the capabilities the runtime (or Multus) fills in: ips and mac.
type RuntimeConfig struct {
	IPs []string `json:"ips,omitempty"`
	Mac string   `json:"mac,omitempty"`
}

// podArgs is what CNI_ARGS may carry for Voile.
type podArgs struct {
	PodNamespace string
	PodName      string
	IP           string
	Mac          string
}

// loadConf parses stdin: a decode failure is code 6, a bad value code 7, a version code 1.
func loadConf(stdin []byte) (*NetConf, *types.Error) {
	conf := &NetConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return nil, types.NewError(types.ErrInvalidNetworkConfig,
				fmt.Sprintf("invalid configuration: field %q must be a %s", typeErr.Field, typeErr.Type), "")
		}
		return nil, types.NewError(types.ErrDecodingFailure, "cannot decode the configuration", err.Error())
	}
	if conf.Network == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			"invalid configuration: \"network\" (the OverlayNetwork) is required", "")
	}
	if !dnsLabel.MatchString(conf.Network) {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("invalid configuration: network %q is not an OverlayNetwork name", conf.Network), "")
	}
	if conf.Namespace != "" && !dnsLabel.MatchString(conf.Namespace) {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("invalid configuration: namespace %q is not a namespace name", conf.Namespace), "")
	}
	if conf.Socket == "" {
		conf.Socket = defaultSocket
	}
	if !strings.HasPrefix(conf.Socket, "/") {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("invalid configuration: socket %q must be an absolute path", conf.Socket), "")
	}
	if conf.SpoolDir == "" {
		conf.SpoolDir = defaultSpoolDir
	}
	if !strings.HasPrefix(conf.SpoolDir, "/") {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("invalid configuration: spoolDir %q must be an absolute path", conf.SpoolDir), "")
	}
	if conf.Timeout == 0 {
		conf.Timeout = defaultTimeout
	}
	if conf.Timeout < 0 || conf.Timeout > maxTimeout {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("invalid configuration: timeout must be in (0, %.0f] seconds", maxTimeout), "")
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "cannot decode prevResult", err.Error())
	}
	return conf, nil
}

// staticIP is the single IPv4 address runtimeConfig "ips" asks for ("" when none); a prefix
// length is accepted and dropped (the network's CIDR decides it).
func (c *NetConf) staticIP() (string, *types.Error) {
	switch len(c.RuntimeConfig.IPs) {
	case 0:
		return "", nil
	case 1:
	default:
		return "", types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("runtimeConfig.ips: one IPv4 address per interface, got %d", len(c.RuntimeConfig.IPs)), "")
	}
	ip, err := parseIPv4(c.RuntimeConfig.IPs[0])
	if err != nil {
		return "", types.NewError(types.ErrInvalidNetworkConfig, "runtimeConfig.ips: "+err.Error(), "")
	}
	return ip, nil
}

func parseIPv4(raw string) (string, error) {
	text := raw
	if addr, _, err := net.ParseCIDR(raw); err == nil {
		text = addr.String()
	}
	ip := net.ParseIP(text)
	if ip == nil || ip.To4() == nil {
		return "", fmt.Errorf("%q is not an IPv4 address", raw)
	}
	return ip.To4().String(), nil
}

func parseMac(raw string) (string, error) {
	mac, err := net.ParseMAC(raw)
	if err != nil || len(mac) != 6 {
		return "", fmt.Errorf("%q is not a MAC address", raw)
	}
	return mac.String(), nil
}

// parseArgs reads CNI_ARGS ("K=V;K=V"): a malformed pair or value is code 4 (the environment).
// Unknown keys are ignored, as runtimes add their own (IgnoreUnknown, K8S_POD_UID, ...).
func parseArgs(raw string) (podArgs, *types.Error) {
	var args podArgs
	if raw == "" {
		return args, nil
	}
	for _, pair := range strings.Split(raw, ";") {
		if pair == "" {
			continue
		}
		key, value, ok := strings.Cut(pair, "=")
		if !ok || key == "" {
			return args, types.NewError(types.ErrInvalidEnvironmentVariables,
				fmt.Sprintf("CNI_ARGS: %q is not KEY=VALUE", pair), "")
		}
		switch key {
		case "K8S_POD_NAMESPACE":
			args.PodNamespace = value
		case "K8S_POD_NAME":
			args.PodName = value
		case "IP":
			ip, err := parseIPv4(value)
			if err != nil {
				return args, types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_ARGS IP: "+err.Error(), "")
			}
			args.IP = ip
		case "MAC":
			mac, err := parseMac(value)
			if err != nil {
				return args, types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_ARGS MAC: "+err.Error(), "")
			}
			args.Mac = mac
		}
	}
	if args.PodNamespace != "" && !dnsLabel.MatchString(args.PodNamespace) {
		return args, types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("CNI_ARGS K8S_POD_NAMESPACE: %q is not a namespace name", args.PodNamespace), "")
	}
	return args, nil
}

// namespace is where the attachment's Endpoint lives: the pod's namespace, else the conf's.
func (c *NetConf) namespace(args podArgs) string {
	if args.PodNamespace != "" {
		return args.PodNamespace
	}
	return c.Namespace
}

// pod is the Pod the attachment is for, when CNI_ARGS name one (nil otherwise).
func (args podArgs) pod() *podRef {
	if args.PodNamespace == "" || args.PodName == "" {
		return nil
	}
	return &podRef{Namespace: args.PodNamespace, Name: args.PodName}
}

// labels names the pod on its Endpoint. A pod name that is no label value (podman's container
// names may be longer than 63 characters) is left out rather than failing the ADD.
func (args podArgs) labels() map[string]string {
	labels := map[string]string{}
	if args.PodNamespace != "" {
		labels[labelPodNamespace] = args.PodNamespace
	}
	if args.PodName != "" && labelValue.MatchString(args.PodName) {
		labels[labelPodName] = args.PodName
	}
	return labels
}

// request chooses the static address and MAC: runtimeConfig (Multus, capabilities) or CNI_ARGS
// (podman); both given and different is an invalid configuration.
func (c *NetConf) static(args podArgs) (ip, mac string, e *types.Error) {
	ip, e = c.staticIP()
	if e != nil {
		return "", "", e
	}
	if ip != "" && args.IP != "" && ip != args.IP {
		return "", "", types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("runtimeConfig.ips %s and CNI_ARGS IP=%s differ", ip, args.IP), "")
	}
	if ip == "" {
		ip = args.IP
	}
	if c.RuntimeConfig.Mac != "" {
		parsed, err := parseMac(c.RuntimeConfig.Mac)
		if err != nil {
			return "", "", types.NewError(types.ErrInvalidNetworkConfig, "runtimeConfig.mac: "+err.Error(), "")
		}
		mac = parsed
	}
	if mac != "" && args.Mac != "" && mac != args.Mac {
		return "", "", types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("runtimeConfig.mac %s and CNI_ARGS MAC=%s differ", mac, args.Mac), "")
	}
	if mac == "" {
		mac = args.Mac
	}
	return ip, mac, nil
}
