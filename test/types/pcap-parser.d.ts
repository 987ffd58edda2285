/** pcap-parser (the tests' independent reader of classic pcap) ships no types. */
declare module 'pcap-parser';
