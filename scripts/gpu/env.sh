# Source on the GPU machine after scripts/gpu/prepare.sh: CUDA MLX for kooka and Python.
export LD_LIBRARY_PATH=/opt/mlxsite/mlx/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PYTHONPATH=/opt/mlxsite${PYTHONPATH:+:$PYTHONPATH}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
