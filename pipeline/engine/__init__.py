"""The ONLY package that imports ray: cluster.py (init/attach), scan.py (Ray Data scan plan), train.py (Ray
Train), filter.py (Ray tasks over shards). Import the submodules explicitly; this file imports nothing."""
