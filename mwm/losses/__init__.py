"""Loss functions: pure, unreduced, one named function per paper equation."""
