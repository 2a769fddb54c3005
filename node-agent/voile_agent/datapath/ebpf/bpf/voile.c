// SPDX-License-Identifier: Apache-2.0
// Voile's eBPF datapath: tc (clsact) programs on each endpoint's host-side veth, on the host's
// VXLAN device in external (collect_md) mode and on the probe port, driven by pinned maps that
// the node agent writes (voile_agent/datapath/ebpf/maps.py mirrors every struct here, and
// trace.py mirrors every decision, so `kubectl voile trace` reads the same maps).
//
//   from_ep     anti-spoofing (the port's own MAC and IPv4 only), local ARP responder,
//               unicast to a local port (bpf_redirect_peer) or a remote VTEP (tunnel key +
//               redirect to the VXLAN device), BUM to the VNI's local ports and member VTEPs;
//   from_vxlan  the VNI from the tunnel key; only endpoints of that VNI; probe answers;
//   from_probe  the agent's data-path probes into the tunnel (planning/probes.py).
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_PORTS 64   /* local ports of one VNI a flood reaches */
#define MAX_VTEPS 128  /* remote VTEPs of one VNI a flood reaches */
#define MAX_ENTRIES 65536

#define PROBE_PORT 47100
#define REPLY_PORT 47101

#define LOCAL_PEER 1 /* deliver with bpf_redirect_peer (the port's peer is in another netns) */

enum drop_reason {
	DROP_UNKNOWN_PORT = 0,
	DROP_SPOOFED_MAC = 1,
	DROP_SPOOFED_IP = 2,
	DROP_SPOOFED_ARP = 3,
	DROP_ETHERTYPE = 4,
	DROP_UNKNOWN_VNI = 5,
	DROP_NO_LOCAL_DESTINATION = 6,
	DROP_MALFORMED = 7,
	DROP_NO_TUNNEL = 8,
	DROP_HAIRPIN = 9,
	DROP_NOT_PROBE = 10,
	DROP_MAX = 16,
};

struct config {
	__u32 vxlan_ifindex;
	__u32 probe_ifindex;
	__u32 vtep; /* network order */
	__u32 build; /* the agent's id of this object's source: other pins are replaced */
};

struct endpoint {
	__u32 vni;
	__u32 ip; /* network order */
	__u8 mac[6];
	__u16 pad;
};

struct fdb_key {
	__u32 vni;
	__u8 mac[6];
	__u16 pad;
};

struct fdb_value {
	__u32 ifindex; /* local port, or 0 */
	__u32 vtep;    /* remote VTEP (network order), or 0 */
	__u32 flags;
};

struct arp_key {
	__u32 vni;
	__u32 ip; /* network order */
};

struct arp_value {
	__u8 mac[6];
	__u16 pad;
};

struct flood {
	__u32 n_ports;
	__u32 n_vteps;
	__u32 ports[MAX_PORTS];
	__u32 vteps[MAX_VTEPS]; /* network order */
};

struct counters {
	__u64 rx_packets;
	__u64 rx_bytes;
	__u64 tx_packets;
	__u64 tx_bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} voile_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, __u32); /* ifindex of the host-side end */
	__type(value, struct endpoint);
} voile_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct fdb_key);
	__type(value, struct fdb_value);
} voile_fdb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct arp_key);
	__type(value, struct arp_value);
} voile_arp SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); /* VNI: present = this host carries it */
	__type(value, struct flood);
} voile_flood SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); /* VNI */
	__type(value, struct counters);
} voile_vni_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, __u32); /* ifindex */
	__type(value, struct counters);
} voile_port_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_MAX);
	__type(key, __u32);
	__type(value, __u64);
} voile_drops SEC(".maps");

struct arphdr_eth {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
} __attribute__((packed));

static const __u8 RESPONDER[6] = {0x0e, 0x76, 0xff, 0xff, 0xff, 0xfe};

static __always_inline int drop(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&voile_drops, &reason);
	if (n)
		*n += 1;
	return TC_ACT_SHOT;
}

static __always_inline void count_rx(void *map, __u32 key, __u64 bytes)
{
	struct counters *c = bpf_map_lookup_elem(map, &key);
	if (c) {
		__sync_fetch_and_add(&c->rx_packets, 1);
		__sync_fetch_and_add(&c->rx_bytes, bytes);
	}
}

static __always_inline void count_tx(void *map, __u32 key, __u64 bytes)
{
	struct counters *c = bpf_map_lookup_elem(map, &key);
	if (c) {
		__sync_fetch_and_add(&c->tx_packets, 1);
		__sync_fetch_and_add(&c->tx_bytes, bytes);
	}
}

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
	       a[5] == b[5];
}

static __always_inline void mac_copy(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(dst, src, 6);
}

static __always_inline struct config *config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&voile_config, &zero);
}

static __always_inline int to_vtep(struct __sk_buff *skb, struct config *cfg, __u32 vni, __u32 vtep,
				   int clone)
{
	struct bpf_tunnel_key key = {};
	key.tunnel_id = vni;
	key.remote_ipv4 = bpf_ntohl(vtep);
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return drop(DROP_NO_TUNNEL);
	if (clone)
		return bpf_clone_redirect(skb, cfg->vxlan_ifindex, 0);
	return bpf_redirect(cfg->vxlan_ifindex, 0);
}

static __always_inline int to_local(struct __sk_buff *skb, struct fdb_value *dst)
{
	count_tx(&voile_port_stats, dst->ifindex, skb->len);
	if (dst->flags & LOCAL_PEER)
		return bpf_redirect_peer(dst->ifindex, 0);
	return bpf_redirect(dst->ifindex, 0);
}

/* Broadcast, multicast and unknown unicast: a copy to every local port of the VNI but the one
 * it came in on, and (from a local port only) one per member VTEP. */
static __always_inline int flood(struct __sk_buff *skb, struct config *cfg, __u32 vni,
				 int from_tunnel)
{
	struct flood *f = bpf_map_lookup_elem(&voile_flood, &vni);
	if (!f)
		return drop(DROP_UNKNOWN_VNI);
	__u32 in = skb->ifindex;
	for (__u32 i = 0; i < MAX_PORTS; i++) {
		if (i >= f->n_ports)
			break;
		__u32 port = f->ports[i];
		if (port && port != in) {
			count_tx(&voile_port_stats, port, skb->len);
			bpf_clone_redirect(skb, port, 0);
		}
	}
	if (!from_tunnel) {
		for (__u32 i = 0; i < MAX_VTEPS; i++) {
			if (i >= f->n_vteps)
				break;
			if (f->vteps[i])
				to_vtep(skb, cfg, vni, f->vteps[i], 1);
		}
	}
	return TC_ACT_SHOT;
}

static __always_inline int arp_from_ep(struct __sk_buff *skb, struct config *cfg,
				       struct endpoint *ep)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct arphdr_eth *arp = data + sizeof(*eth);
	if ((void *)(arp + 1) > data_end)
		return drop(DROP_MALFORMED);
	__u32 spa;
	__builtin_memcpy(&spa, arp->spa, 4);
	if (!mac_eq(arp->sha, ep->mac) || spa != ep->ip)
		return drop(DROP_SPOOFED_ARP);
	if (arp->op == bpf_htons(1)) {
		struct arp_key key = {.vni = ep->vni};
		__builtin_memcpy(&key.ip, arp->tpa, 4);
		struct arp_value *answer = bpf_map_lookup_elem(&voile_arp, &key);
		if (answer) {
			/* Answer in place: become the target, send it back out of its port. */
			mac_copy(eth->h_dest, eth->h_source);
			mac_copy(eth->h_source, answer->mac);
			arp->op = bpf_htons(2);
			mac_copy(arp->tha, arp->sha);
			__builtin_memcpy(arp->tpa, arp->spa, 4);
			mac_copy(arp->sha, answer->mac);
			__builtin_memcpy(arp->spa, &key.ip, 4);
			return bpf_redirect(skb->ifindex, 0);
		}
	}
	return -1; /* forward as any other frame */
}

SEC("tc")
int from_ep(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 ifindex = skb->ifindex;
	struct config *cfg = config();
	if (!cfg)
		return drop(DROP_NO_TUNNEL);
	struct endpoint *ep = bpf_map_lookup_elem(&voile_ports, &ifindex);
	if (!ep)
		return drop(DROP_UNKNOWN_PORT);
	if ((void *)(eth + 1) > data_end)
		return drop(DROP_MALFORMED);
	if (!mac_eq(eth->h_source, ep->mac))
		return drop(DROP_SPOOFED_MAC);
	count_rx(&voile_port_stats, ifindex, skb->len);
	__u32 vni = ep->vni;
	if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
		int verdict = arp_from_ep(skb, cfg, ep);
		if (verdict >= 0 || verdict == TC_ACT_SHOT)
			return verdict;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		eth = data;
		if ((void *)(eth + 1) > data_end)
			return drop(DROP_MALFORMED);
	} else if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + sizeof(*eth);
		if ((void *)(ip + 1) > data_end)
			return drop(DROP_MALFORMED);
		if (ip->saddr != ep->ip)
			return drop(DROP_SPOOFED_IP);
	} else {
		return drop(DROP_ETHERTYPE);
	}
	count_tx(&voile_vni_stats, vni, skb->len);
	if (!(eth->h_dest[0] & 1)) {
		struct fdb_key key = {.vni = vni};
		mac_copy(key.mac, eth->h_dest);
		struct fdb_value *dst = bpf_map_lookup_elem(&voile_fdb, &key);
		if (dst) {
			if (dst->ifindex == ifindex)
				return drop(DROP_HAIRPIN);
			if (dst->ifindex)
				return to_local(skb, dst);
			return to_vtep(skb, cfg, vni, dst->vtep, 0);
		}
	}
	return flood(skb, cfg, vni, 0);
}

/* A probe of a peer (answer it), or the answer to one of ours (to the probe port). */
static __always_inline int probe_from_tunnel(struct __sk_buff *skb, struct config *cfg,
					     struct bpf_tunnel_key *tkey)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    ip->protocol != IPPROTO_UDP || ip->ihl != 5 || ip->daddr != cfg->vtep)
		return -1;
	if (udp->dest == bpf_htons(PROBE_PORT) && mac_eq(eth->h_dest, RESPONDER)) {
		__u32 vni = tkey->tunnel_id;
		if (!bpf_map_lookup_elem(&voile_flood, &vni))
			return drop(DROP_UNKNOWN_VNI);
		__u32 src = ip->saddr;
		mac_copy(eth->h_dest, eth->h_source);
		mac_copy(eth->h_source, RESPONDER);
		ip->saddr = ip->daddr;
		ip->daddr = src; /* a swap: the IP checksum stays right */
		udp->dest = bpf_htons(REPLY_PORT);
		udp->check = 0;
		struct bpf_tunnel_key key = {};
		key.tunnel_id = vni;
		key.remote_ipv4 = tkey->remote_ipv4;
		key.tunnel_ttl = 64;
		if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
			return drop(DROP_NO_TUNNEL);
		return bpf_redirect(cfg->vxlan_ifindex, 0);
	}
	if (udp->dest == bpf_htons(REPLY_PORT) && eth->h_dest[0] == 0x0e && eth->h_dest[1] == 0x76 &&
	    eth->h_dest[2] == 0x00) {
		if (!cfg->probe_ifindex)
			return drop(DROP_NOT_PROBE);
		return bpf_redirect(cfg->probe_ifindex, 0);
	}
	return -1;
}

SEC("tc")
int from_vxlan(struct __sk_buff *skb)
{
	struct bpf_tunnel_key tkey = {};
	struct config *cfg = config();
	if (!cfg)
		return drop(DROP_NO_TUNNEL);
	if (bpf_skb_get_tunnel_key(skb, &tkey, sizeof(tkey), 0) < 0)
		return drop(DROP_UNKNOWN_VNI);
	__u32 vni = tkey.tunnel_id;
	int verdict = probe_from_tunnel(skb, cfg, &tkey);
	if (verdict >= 0 || verdict == TC_ACT_SHOT)
		return verdict;
	if (!bpf_map_lookup_elem(&voile_flood, &vni))
		return drop(DROP_UNKNOWN_VNI);
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return drop(DROP_MALFORMED);
	count_rx(&voile_vni_stats, vni, skb->len);
	if (!(eth->h_dest[0] & 1)) {
		struct fdb_key key = {.vni = vni};
		mac_copy(key.mac, eth->h_dest);
		struct fdb_value *dst = bpf_map_lookup_elem(&voile_fdb, &key);
		if (dst && dst->ifindex)
			return to_local(skb, dst);
		if (dst)
			return drop(DROP_NO_LOCAL_DESTINATION);
	}
	return flood(skb, cfg, vni, 1);
}

SEC("tc")
int from_probe(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp = (void *)(ip + 1);
	struct config *cfg = config();
	if (!cfg)
		return drop(DROP_NO_TUNNEL);
	if ((void *)(udp + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    ip->protocol != IPPROTO_UDP || udp->dest != bpf_htons(PROBE_PORT) ||
	    eth->h_source[0] != 0x0e || eth->h_source[1] != 0x76 || eth->h_source[2] != 0x00)
		return drop(DROP_NOT_PROBE);
	__u32 vni = (__u32)eth->h_source[3] << 16 | (__u32)eth->h_source[4] << 8 | eth->h_source[5];
	return to_vtep(skb, cfg, vni, ip->daddr, 0);
}

char LICENSE[] SEC("license") = "GPL";
