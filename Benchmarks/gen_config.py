#!/usr/bin/env python3
"""Writes a large weir config for load-time measurements: N clusters of E endpoints and one
listener per 10 clusters (the same shape as Benchmarks/Micro's ConfigCompile).
Usage: Benchmarks/gen_config.py [clusters=1000] [endpoints=10] > big.yaml"""
import sys

clusters = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
endpoints = int(sys.argv[2]) if len(sys.argv) > 2 else 10
out = ["listeners:"]
for l in range(max(1, clusters // 10)):
    out.append(f'  - {{ name: l{l}, address: "127.0.{1 + l // 250}.{l % 250 + 1}:{10000 + l}", cluster: c{l * 10} }}')
out.append("clusters:")
for c in range(clusters):
    out.append(f"  - name: c{c}\n    balancer: round_robin\n    endpoints:")
    for e in range(endpoints):
        out.append(f'      - {{ address: "10.{c // 250}.{c % 250}.{e + 1}:8080", weight: {e % 3 + 1} }}')
print("\n".join(out))
