"""Study analyses: the plugin contract, the study table, statistics, plots and the report."""
