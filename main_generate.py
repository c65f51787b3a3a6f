"""Generate from a trained model (same as `consingan generate`).

    python main_generate.py --model_dir TrainedModels/rocket/<run> --num_samples 50
    python main_generate.py --model_dir runs/rocket --scale_h 1 --scale_w 2 --seed 0
"""
from consingan.cli import script

if __name__ == "__main__":
    script("generate")
