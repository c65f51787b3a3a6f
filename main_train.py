"""Train ConSinGAN on one image (the reference's flags; same as `consingan train`).

    python main_train.py --train_mode generation --input_name Images/Generation/rocket.png
    python main_train.py --input_name Images/Generation/rocket.png --niter 500 --out_dir runs/rocket
"""
from consingan.cli import script

if __name__ == "__main__":
    script("train")
