"""What a person looks at: image grids and GIFs, progress bars."""
