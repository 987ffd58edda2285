/**
 * Every reason a packet can be dropped, in one list.
 *
 * The key is the reason's name in JSON and in code; the value is the text a
 * person reads. The index of a key in DROP_NAMES is the small integer the
 * fast path stores per packet (0 means "not dropped"), so a counter array
 * indexed by it is all the accounting needs.
 */
export const DROP = {
  none: 'not dropped',
  runt: 'frame shorter than an Ethernet header',
  vlanTruncated: '802.1Q/802.1ad tag cut short',
  arpTruncated: 'ARP header cut short',
  ipv4Truncated: 'IPv4 header cut short',
  ipv4BadVersion: 'IPv4 version field is not 4',
  ipv4BadHeaderLength: 'IPv4 IHL below 5 or past the packet',
  ipv4BadTotalLength: 'IPv4 total length shorter than its header or longer than the frame',
  ipv6Truncated: 'IPv6 header cut short',
  ipv6BadVersion: 'IPv6 version field is not 6',
  ipv6BadPayloadLength: 'IPv6 payload length longer than the frame',
  ipv6BadExtHeader: 'IPv6 extension header runs past the packet',
  tcpTruncated: 'TCP header cut short',
  tcpBadDataOffset: 'TCP data offset below 5 or past the packet',
  udpTruncated: 'UDP header cut short',
  udpBadLength: 'UDP length below 8 or longer than the IP payload',
  icmpTruncated: 'ICMP/ICMPv6 header cut short',
  vxlanBad: 'VXLAN header cut short or I flag not set',
  tunnelTruncated: 'tunnel packet for this host cut by the capture before its flag could be read',
  geneveBad: 'Geneve header cut short, wrong version, or options past the packet',
  linkType: 'link type of the capture interface is not Ethernet',
  ruleDrop: 'a rule said drop',
  noDestination: 'no port to send to (no segment or port for it, or a flood with no other member)',
  vpidUnmapped: 'output VPID has no PPID in the mapping table',
  upcallFailed: 'the FPAG installed no flow for this miss',
  flowTableFull: 'the flow table is full and nothing could be evicted',
  upcallQueueFull: 'its flow was being set up by the FPAG on its thread and the queue of packets waiting for it was full',
  frameTooBig: 'frame longer than a live port\'s receive slot: the read cut it, so it is not forwarded cut',
  vlanFromVm: 'a VM port sent a VLAN-tagged frame (only untagged and priority-tagged VID 0 are taken)',
  portSecMac: 'port security: source MAC is not the VM interface\'s',
  portSecIpv4: 'port security: IPv4 source is not one of the VM interface\'s addresses',
  portSecArp: 'port security: ARP sender IP is not one of the VM interface\'s addresses',
  portSecIpv6: 'port security: IPv6 source is not one of the VM interface\'s addresses',
  encapTooLong: 'encapsulated, the packet would be longer than the outer IP length field can say',
  firewall: 'the interface\'s firewall refused it (a new connection no rule allows, or ct_state inv)',
  ctNoRule: 'after ct(table=N), no rule of table N matched (a table other than 0 has no L2 fallback)',
  recircLoop: 'sent through ct(table=…) more times than the datapath allows for one packet (a loop in the rules)',
  fwHoldOverflow: 'its port\'s firewall was being moved to another version and the hold queue was full',
  offloadBad: 'a port with offloads gave a virtio-net header that does not match the frame (checksum start or offset not its TCP/UDP header\'s, a segment type not its protocol\'s)',
} as const;

export type DropReason = keyof typeof DROP;

/** Reason names in index order; index 0 is `none`. */
export const DROP_NAMES = Object.keys(DROP) as DropReason[];
export const DROP_COUNT = DROP_NAMES.length;

/**
 * Not a drop: the code a packet gets in the drop array when the flag check
 * hands it to the special-processing path. Every later fast-path stage skips
 * it as it skips drops; accounting counts it as delivered (to that path).
 */
export const SPECIAL = 255;

/**
 * Not a drop: the code of a packet the fast lane (fast-lane.ts) already
 * forwarded. Later stages skip it as they skip drops; accounting counts it
 * as delivered.
 */
export const FORWARDED = 254;

/**
 * Not a drop: the code of a packet that a ct action took out of this pass
 * (execute.ts collects it; the datapath runs conntrack and a next pass). Later
 * stages of this pass skip it; it is accounted once, in the pass it ends in.
 */
export const RECIRC = 253;

/** Small integer codes, e.g. `D.runt`, for the per-packet drop array. */
export const D = Object.fromEntries(DROP_NAMES.map((n, i) => [n, i])) as { readonly [K in DropReason]: number };
