"""Command-line tools that nothing in the library imports: ``python -m dali_pose.tools.X``
for X in synthetic (the embedded dataset), preview, build_pool (NODA), bench (with
bench_kernels and the classic reference loader)."""
