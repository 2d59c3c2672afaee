"""Built-in analyses of a study (the paper's, Locatello et al. 2019 section 5), one module each."""
