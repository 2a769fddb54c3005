package main

import (
	"fmt"
	"net"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// buildResult is the ADD result (spec 1.x; skel's PrintResult converts it to 0.4.0 when the
// configuration asks for that): the host veth, the container interface with its MAC and
// sandbox, its address pointing at that interface with the gateway, the default route via the
// gateway when the network has one, no DNS. A previous plugin's result (chaining) is kept and
// ours is appended.
func buildResult(r *realized, ifname, netns string, prev types.Result) (*current.Result, error) {
	ip := net.ParseIP(r.IP).To4()
	if ip == nil || r.PrefixLength < 0 || r.PrefixLength > 32 {
		return nil, fmt.Errorf("the agent answered an unusable address %q/%d", r.IP, r.PrefixLength)
	}
	result := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	if prev != nil {
		converted, err := current.NewResultFromResult(prev)
		if err != nil {
			return nil, fmt.Errorf("prevResult: %w", err)
		}
		result = converted
	}
	name := r.Interface
	if name == "" {
		name = ifname
	}
	sandbox := netns
	if r.Netns != nil && *r.Netns != "" {
		sandbox = *r.Netns
	}
	host := len(result.Interfaces)
	result.Interfaces = append(result.Interfaces,
		&current.Interface{Name: r.HostInterface, Mtu: r.MTU},
		&current.Interface{Name: name, Mac: r.Mac, Mtu: r.MTU, Sandbox: sandbox},
	)
	index := host + 1
	config := &current.IPConfig{
		Interface: &index,
		Address:   net.IPNet{IP: ip, Mask: net.CIDRMask(r.PrefixLength, 32)},
	}
	if r.Gateway != nil && *r.Gateway != "" {
		gw := net.ParseIP(*r.Gateway).To4()
		if gw == nil {
			return nil, fmt.Errorf("the agent answered an unusable gateway %q", *r.Gateway)
		}
		config.Gateway = gw
		result.Routes = append(result.Routes, &types.Route{
			Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
			GW:  gw,
		})
	}
	result.IPs = append(result.IPs, config)
	return result, nil
}

// compareWithPrev checks that prevResult shows the attachment as the agent realized it: the
// container interface (name, sandbox, MAC) and its address. The reason it does not, or "".
func compareWithPrev(r *realized, ifname, netns string, prev types.Result) (string, error) {
	res, err := current.NewResultFromResult(prev)
	if err != nil {
		return "", fmt.Errorf("prevResult: %w", err)
	}
	want := fmt.Sprintf("%s/%d", r.IP, r.PrefixLength)
	for i, intf := range res.Interfaces {
		if intf.Name != ifname || intf.Sandbox == "" {
			continue
		}
		if intf.Sandbox != netns {
			return fmt.Sprintf("prevResult puts %s in %s, not %s", ifname, intf.Sandbox, netns), nil
		}
		if !strings.EqualFold(intf.Mac, r.Mac) {
			return fmt.Sprintf("%s has MAC %s, prevResult says %s", ifname, r.Mac, intf.Mac), nil
		}
		for _, ipc := range res.IPs {
			if ipc.Interface != nil && *ipc.Interface == i && ipc.Address.String() == want {
				return "", nil
			}
		}
		return fmt.Sprintf("%s has address %s, which prevResult does not show", ifname, want), nil
	}
	return fmt.Sprintf("prevResult has no interface %s in a sandbox", ifname), nil
}
