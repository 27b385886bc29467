//! Controllable TCP proxies, one per directed node-to-node link.
